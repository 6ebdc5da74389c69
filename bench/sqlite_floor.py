"""The most `bench.ledger`'s ledger/raw can reach on SQLite: both pairs on bare `sqlite3`.

`bench.ledger` runs its raw and ledger pairs through SQLAlchemy. This script runs the
same two pairs with no Python layer above the driver: the raw pair's two UPDATEs, and
the statements `billing.ledger` issues on SQLite (reserve: conditional UPDATE + hold
INSERT; settle: hold UPDATE ... RETURNING, balance UPDATE ... RETURNING, deduction and
usage-log INSERTs), each pair as two `BEGIN IMMEDIATE` ... `COMMIT` transactions on one
`sqlite3` connection with the engine's pragmas. What is left is SQLite's own work:
the ledger pair writes 16.5 pages to the WAL (four tables and their indexes; measured
with `PRAGMA wal_checkpoint`) where the raw pair writes 2.

It also times `bench.ledger`'s raw pair through SQLAlchemy in the same run, and prints
the ceiling for `bench.ledger`'s ledger/raw on SQLite: the raw pair's SQLAlchemy time
over (the ledger pair's driver time + the SQLAlchemy overhead the raw pair pays). That
ceiling assumes the ledger's four extra statements cost nothing above the driver, so
the real figure is lower. The audit at the end checks the rows are real ledger rows.

    .venv/bin/python -m bench.sqlite_floor            # ~10 s
    .venv/bin/python -m bench.sqlite_floor --quick
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import print_table
from bench.ledger import (
    CHARGE,
    HOLD,
    TTL,
    USAGE,
    mark_succeeded,
    prepare,
    queued_jobs,
    restore,
    timed,
)
from bench.ledger import raw_pair as sqlalchemy_raw_pair
from bench.ledger import snapshot as credits_of
from billing.audit import audit
from models import utcnow
from models.db import dispose_engines, get_engine, transaction
from models.sqlite import SQLITE_BUSY_TIMEOUT_MS

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)
RAW_RESERVE = (
    "UPDATE accounts SET reserved_credits = reserved_credits + ? "
    "WHERE id = ? AND credits - reserved_credits >= ?"
)
RAW_SETTLE = (
    "UPDATE accounts SET credits = credits - ?, reserved_credits = reserved_credits - ? "
    "WHERE id = ?"
)
RESERVE = (
    "UPDATE accounts SET reserved_credits = reserved_credits + ? WHERE id = ? "
    "AND credits - reserved_credits >= ? AND status IN ('trial', 'active', 'pending_payment')"
)
INSERT_HOLD = (
    "INSERT INTO credit_reservations (account_id, job_id, amount, status, expires_at, "
    "created_at) VALUES (?, ?, ?, 'held', ?, ?)"
)
CLOSE_HOLD = (
    "UPDATE credit_reservations SET status = 'settled', resolved_at = ? "
    "WHERE job_id = ? AND status = 'held' RETURNING account_id, amount"
)
POST_CHARGE = (
    "UPDATE accounts SET credits = credits - ?, reserved_credits = reserved_credits - ? "
    "WHERE id = ? RETURNING credits"
)
INSERT_DEDUCTION = (
    "INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, "
    "job_id, metadata, created_at) VALUES (?, 'deduction', ?, ?, ?, ?, ?, ?)"
)
INSERT_USAGE = (
    "INSERT INTO credit_usage_logs (account_id, job_id, site_id, operation, model, tokens_in, "
    "tokens_out, images, credits, cost_usd, items_created, created_at) "
    "VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def stamp() -> str:
    """A timestamp as SQLAlchemy stores DateTime on SQLite."""
    return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")


def raw_pair(db: sqlite3.Connection, account_id: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    if db.execute(RAW_RESERVE, (HOLD, account_id, HOLD)).rowcount != 1:
        raise RuntimeError(f"raw reserve refused on {account_id}")
    db.execute("COMMIT")
    db.execute("BEGIN IMMEDIATE")
    db.execute(RAW_SETTLE, (CHARGE.credits, HOLD, account_id))
    db.execute("COMMIT")


def ledger_pair(db: sqlite3.Connection, account_and_job: tuple[str, str]) -> None:
    account_id, job_id = account_and_job
    now = utcnow()
    db.execute("BEGIN IMMEDIATE")
    if db.execute(RESERVE, (HOLD, account_id, HOLD)).rowcount != 1:
        raise RuntimeError(f"reserve refused on {account_id}")
    expires = (now + TTL).strftime("%Y-%m-%d %H:%M:%S.%f")
    db.execute(INSERT_HOLD, (account_id, job_id, HOLD, expires, stamp()))
    db.execute("COMMIT")
    db.execute("BEGIN IMMEDIATE")
    at = stamp()
    account_id, hold = db.execute(CLOSE_HOLD, (at, job_id)).fetchone()
    charged = min(CHARGE.credits, hold)
    (balance,) = db.execute(POST_CHARGE, (charged, hold, account_id)).fetchone()
    metadata = json.dumps({"hold": hold, "estimate_miss": CHARGE.estimate_miss})
    description = f"{USAGE.operation} on {USAGE.model}"
    db.execute(INSERT_DEDUCTION, (account_id, -charged, balance, description, job_id, metadata, at))
    db.execute(
        INSERT_USAGE,
        (account_id, job_id, USAGE.operation, USAGE.model, USAGE.tokens_in, USAGE.tokens_out,
         USAGE.images, charged, str(CHARGE.cost_usd), USAGE.items_created, at),
    )  # fmt: skip
    db.execute("COMMIT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="timed pairs per loop")
    parser.add_argument("--rounds", type=int, default=5, help="raw/ledger alternations")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.rounds = 200, 1
    with tempfile.TemporaryDirectory(prefix="aijobs-floor-") as tmp:
        url = f"sqlite:///{tmp}/floor.db"
        accounts = prepare(url, 1)
        engine = get_engine(url)
        before = credits_of(engine, accounts.raw)
        db = sqlite3.connect(f"{tmp}/floor.db", isolation_level=None)
        for pragma in PRAGMAS:
            db.execute(pragma)
        raw_seconds = ledger_seconds = sqlalchemy_seconds = 0.0
        for r in range(args.rounds):
            n = args.pairs // args.rounds + (r < args.pairs % args.rounds)
            jobs = queued_jobs(engine, accounts.ledger, n)
            raw_seconds += timed(lambda a: raw_pair(db, a), accounts.raw * n, 1)
            ledger_seconds += timed(lambda item: ledger_pair(db, item), jobs, 1)
            sqlalchemy_seconds += timed(
                lambda a: sqlalchemy_raw_pair(engine, a), accounts.raw * n, 1
            )
            mark_succeeded(engine, jobs)
        db.close()
        restore(engine, before)
        with transaction(url) as session:
            violations = audit(session)
        dispose_engines()
    for violation in violations[:10]:
        print("  VIOLATION:", violation)
    raw_rate, ledger_rate = args.pairs / raw_seconds, args.pairs / ledger_seconds
    sqlalchemy_overhead = sqlalchemy_seconds - raw_seconds
    ceiling = sqlalchemy_seconds / (ledger_seconds + sqlalchemy_overhead)
    print_table(
        ["pairs", "driver raw/s", "driver ledger/s", "driver ledger/raw", "SQLAlchemy raw/s",
         "ceiling of bench.ledger ledger/raw", "audit"],
        [[args.pairs, raw_rate, ledger_rate, f"{ledger_rate / raw_rate:.3f}",
          args.pairs / sqlalchemy_seconds, f"{ceiling:.3f}", len(violations)]],
    )  # fmt: skip
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
