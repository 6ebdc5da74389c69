"""`ops audit` at two ledger sizes: its wall time and peak RSS against a plain count.

For each backend (SQLite temp file; PostgreSQL from `PostgresServer`) the script loads a
consistent ledger (untimed): accounts of `--per-account` jobs each, every job with its
hold; 70 % succeeded (hold settled, one deduction, one usage log), 20 % failed (hold
released), 10 % queued (hold open); each account funded by one registration grant, its
balance chain and reserved credits right. It then grows the same database from the
`--small` size to the `--large` one (more accounts) and, at each size, runs in a fresh
child process, one after the other:

  count   `SELECT count(*)` of accounts, jobs, holds, transactions and usage logs in the
          audit's snapshot: the floor of "read every row once", and the RSS of a process
          that imports the app and opens a session;
  audit   `billing.audit.audit()` in `models.db.snapshot()`, as `python -m ops audit`.

Each child reports its own wall time (connected first, then timed) and its peak RSS
(`VmHWM`). The table prints both for each size, audit/count time, audit - count RSS
(what the audit itself holds), and large/small for each.

    .venv/bin/python -m bench.audit                     # both backends (~4-6 min)
    .venv/bin/python -m bench.audit --db postgresql --small 200000 --large 1000000
    .venv/bin/python -m bench.audit --quick             # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/audit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import each_backend, print_table

ROOT = Path(__file__).resolve().parent.parent
HOLD = 10
TABLES = ("accounts", "jobs", "credit_reservations", "credit_transactions", "credit_usage_logs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list of backends")
    parser.add_argument("--small", type=int, default=100_000, help="jobs at the first size")
    parser.add_argument("--large", type=int, default=500_000, help="jobs at the second size")
    parser.add_argument("--per-account", type=int, default=20, help="jobs per account")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--child", choices=("count", "audit"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large = 2_000, 8_000
    args.db = [name.strip() for name in args.db.split(",") if name.strip()]
    if not set(args.db) <= {"sqlite", "postgresql"}:
        parser.error("--db takes sqlite and/or postgresql")
    if not 0 < args.per_account <= args.small < args.large:
        parser.error("need 0 < --per-account <= --small < --large")
    return args


# --- the ledger's rows -------------------------------------------------------------------


def ledger_rows(first: int, accounts: int, per_account: int) -> dict[str, list[dict[str, Any]]]:
    """Rows of accounts first .. first+accounts-1, in insert order, table by table."""
    now = datetime.now(UTC)
    rows: dict[str, list[dict[str, Any]]] = {table: [] for table in TABLES}
    for a in range(first, first + accounts):
        account = f"acc_bench{a:015d}"
        funding = HOLD * per_account + 100
        balance, reserved = funding, 0
        rows["credit_transactions"].append(
            {"account_id": account, "type": "registration", "amount": funding,
             "balance_after": balance, "description": "bench", "job_id": None,
             "reference": None, "metadata": {}, "created_at": now}
        )  # fmt: skip
        for j in range(per_account):
            job = f"job_b{a:015d}{j:05d}"
            kind = j % 10
            status, hold = (
                ("succeeded", "settled") if kind < 7 else
                ("failed", "released") if kind < 9 else ("queued", "held")
            )  # fmt: skip
            charged = 1 + (a + j) % HOLD if status == "succeeded" else 0
            rows["jobs"].append(
                {"id": job, "account_id": account, "operation": "clustering", "input": {},
                 "model": "gpt-4o-mini", "status": status, "reserved_credits": HOLD,
                 "credits_charged": charged, "attempts": 1, "created_at": now}
            )  # fmt: skip
            rows["credit_reservations"].append(
                {"account_id": account, "job_id": job, "amount": HOLD, "status": hold,
                 "expires_at": now + timedelta(minutes=15), "created_at": now,
                 "resolved_at": None if hold == "held" else now}
            )  # fmt: skip
            if status == "queued":
                reserved += HOLD
            if not charged:
                continue
            balance -= charged
            rows["credit_transactions"].append(
                {"account_id": account, "type": "deduction", "amount": -charged,
                 "balance_after": balance, "description": "clustering", "job_id": job,
                 "reference": None, "metadata": {}, "created_at": now}
            )  # fmt: skip
            rows["credit_usage_logs"].append(
                {"account_id": account, "job_id": job, "site_id": None,
                 "operation": "clustering", "model": "gpt-4o-mini", "tokens_in": 300,
                 "tokens_out": 400, "images": 0, "credits": charged, "cost_usd": "0.000500",
                 "items_created": 1, "created_at": now, "automation_id": None,
                 "outcome": "succeeded"}
            )  # fmt: skip
        rows["accounts"].append(
            {"id": account, "name": account, "status": "active", "credits": balance,
             "reserved_credits": reserved, "usage_ahrefs_queries": 0, "created_at": now}
        )  # fmt: skip
    return rows


def load(db: str, url: str, first: int, accounts: int, per_account: int) -> None:
    """Insert the rows of `accounts` more accounts, a few thousand accounts at a time."""
    step = max(1, 5_000 // per_account)
    for start in range(first, first + accounts, step):
        rows = ledger_rows(start, min(step, first + accounts - start), per_account)
        if db == "sqlite":
            _insert_sqlite(url, rows)
        else:
            _copy_postgres(url, rows)


def _insert_sqlite(url: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    from sqlalchemy import insert

    from models import Base
    from models.db import get_engine

    with get_engine(url).begin() as conn:
        for table in TABLES:
            conn.execute(insert(Base.metadata.tables[table]), rows[table])


def _copy_postgres(url: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    """COPY with foreign-key triggers off: the rows are consistent by construction."""
    from models.db import get_engine

    raw = get_engine(url).raw_connection()
    try:
        cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
        cur.execute("SET session_replication_role = replica")
        for table in TABLES:
            columns = list(rows[table][0])
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows[table]:
                    copy.write_row(
                        [json.dumps(v) if isinstance(v, dict) else v for v in row.values()]
                    )
        cur.execute("SET session_replication_role = DEFAULT")
        raw.commit()
    finally:
        raw.close()


def analyze(db: str, url: str) -> None:
    from sqlalchemy import text

    from models.db import get_engine

    engine = get_engine(url)
    if db == "sqlite":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))


# --- the measured child ------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's own high-water RSS. Not `ru_maxrss`: Linux carries the parent's
    high-water mark across fork and exec into the child's, so a small child of a big
    parent would report the parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(mode: str) -> int:
    """Run in a fresh process: one count pass or one audit, in the audit's snapshot."""
    from sqlalchemy import text

    from billing.audit import audit
    from models.db import snapshot

    with snapshot() as session:
        session.execute(text("SELECT 1"))  # connected before the clock starts
        started = time.perf_counter()
        if mode == "count":
            rows = sum(
                session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in TABLES
            )
            violations: list[str] = []
        else:
            violations = audit(session)
            rows = 0
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": rows, "violations": violations[:10],
                      "violation_count": len(violations), "rss_mb": peak_rss_mb()}))  # fmt: skip
    return 0


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float
    rows: int
    violations: list[str]
    violation_count: int


def measure(url: str, mode: str) -> Run:
    """The child's own wall time and peak RSS, both measured inside it."""
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "bench.audit", "--child", mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} child exited {done.returncode}: {done.stderr[-2000:]}")
    body = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(
        body["seconds"], body["rss_mb"], body["rows"], body["violations"],
        body["violation_count"],
    )  # fmt: skip


def table_rows(url: str) -> dict[str, int]:
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine(url).connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def run_backend(db: str, url: str, args: argparse.Namespace) -> list[list[object]]:
    from billing import catalog
    from models.db import dispose_engines, transaction
    from ops.cli import migrate

    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    results: list[list[object]] = []
    loaded = 0
    baseline: tuple[Run, Run] | None = None
    for size in (args.small, args.large):
        accounts = size // args.per_account
        started = time.perf_counter()
        load(db, url, loaded, accounts - loaded, args.per_account)
        analyze(db, url)
        loaded = accounts
        counts = table_rows(url)
        dispose_engines()
        print(
            f"{db}: loaded {counts['jobs']:,} jobs, {counts['credit_transactions']:,} "
            f"transactions, {counts['credit_usage_logs']:,} usage logs, "
            f"{counts['accounts']:,} accounts in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        count, audited = measure(url, "count"), measure(url, "audit")
        for violation in audited.violations:
            print("  VIOLATION:", violation)
        results.append(
            [db, f"{counts['jobs']:,}", f"{counts['credit_transactions']:,}", count.seconds,
             audited.seconds, f"{audited.seconds / count.seconds:.1f}", count.rss_mb,
             audited.rss_mb, audited.rss_mb - count.rss_mb, audited.violation_count]
        )  # fmt: skip
        if baseline is None:
            baseline = (count, audited)
        else:
            print(
                f"{db}: large/small: jobs {args.large / args.small:.1f}x, audit time "
                f"{audited.seconds / baseline[1].seconds:.1f}x, count time "
                f"{count.seconds / baseline[0].seconds:.1f}x, audit peak RSS "
                f"{audited.rss_mb / baseline[1].rss_mb:.2f}x",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on kill too
    print(
        f"sizes: {args.small:,} and {args.large:,} jobs, {args.per_account} per account; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[list[object]] = []
    for db, url in each_backend(args.db, "audit"):
        results += run_backend(db, url, args)
    print()
    print_table(
        ["db", "jobs", "transactions", "count s", "audit s", "audit/count", "count RSS MiB",
         "audit RSS MiB", "audit-count MiB", "violations"],
        results,
    )  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 1 if any(row[-1] for row in results) else 0


if __name__ == "__main__":
    sys.exit(main())
