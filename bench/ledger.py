"""Reserve+settle pairs/s through `billing/` against raw conditional UPDATEs, same database.

Billing pair (what a submission and a worker do in the ledger):
  tx 1: INSERT a Job + `ledger.reserve` (conditional UPDATE + hold row);
  tx 2: `ledger.settle` (hold held->settled, account UPDATE ... RETURNING, deduction and
        usage-log rows) + the job's UPDATE to `succeeded`, as `billing.jobs.complete_job`
        does (without it the audit would flag every settled job still `queued`).
Raw pair, on the same engine (same SQLite pragmas / BEGIN IMMEDIATE, same pool):
  tx 1: UPDATE accounts SET reserved = reserved + :x WHERE id = :id AND credits - reserved >= :x
  tx 2: UPDATE accounts SET credits = credits - :c, reserved = reserved - :x WHERE id = :id
Diagnostic third loop, "core": the billing pair's own 8 statements (same rows, same
conditions, same RETURNING) as prebuilt SQLAlchemy Core statements on a Connection, no
ORM Session. billing/core shows the ORM's share, core/raw what the extra rows cost.

Each backend (SQLite temp file; PostgreSQL from `PostgresServer`) runs two shapes: one hot
account, and `--accounts` accounts in round robin. Each loop has its own accounts; the raw
accounts' credits are put back afterwards, then `billing.audit.audit` must be [] (the core
loop writes real ledger rows, so the audit also checks it is equivalent).

    .venv/bin/python -m bench.ledger                 # both backends, both shapes (~60 s)
    .venv/bin/python -m bench.ledger --db sqlite --threads 4
    .venv/bin/python -m bench.ledger --quick         # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ledger.py` (make bench)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Connection, Engine, bindparam, insert, select, text, update

from bench import print_table
from billing import catalog, ledger
from billing.audit import audit
from billing.ledger import UsageRecord
from billing.pricing import Charge
from models import (
    Account,
    Base,
    Job,
    new_id,
    utcnow,
)
from models.db import dispose_engines, get_engine, transaction
from ops.cli import migrate
from ops.postgres_server import PostgresServer

HOLD = 10
CHARGE = Charge(credits=7, cost_usd=Decimal("0.001"), estimate_miss=False)
USAGE = UsageRecord(
    operation="clustering", model="gpt-4o-mini", tokens_in=300, tokens_out=400, images=0,
    site_id=None, items_created=1,
)  # fmt: skip
TTL = timedelta(minutes=15)
FUNDING = 100_000_000
RESERVE_SQL = text(
    "UPDATE accounts SET reserved_credits = reserved_credits + :x "
    "WHERE id = :id AND credits - reserved_credits >= :x"
)
SETTLE_SQL = text(
    "UPDATE accounts SET credits = credits - :c, reserved_credits = reserved_credits - :x "
    "WHERE id = :id"
)


_TABLES = Base.metadata.tables
JOBS, HOLDS, ACCOUNTS = _TABLES["jobs"], _TABLES["credit_reservations"], _TABLES["accounts"]
TXNS, LOGS = _TABLES["credit_transactions"], _TABLES["credit_usage_logs"]
CORE_RESERVE = (
    update(ACCOUNTS)
    .where(
        ACCOUNTS.c.id == bindparam("aid"),
        ACCOUNTS.c.credits - ACCOUNTS.c.reserved_credits >= bindparam("x"),
        ACCOUNTS.c.status.in_(ledger.SPENDING_STATUSES),
    )
    .values(reserved_credits=ACCOUNTS.c.reserved_credits + bindparam("x"))
)
CORE_CLOSE_HOLD = (
    update(HOLDS)
    .where(HOLDS.c.job_id == bindparam("jid"), HOLDS.c.status == "held")
    .values(status="settled", resolved_at=bindparam("now"))
    .returning(HOLDS.c.account_id, HOLDS.c.amount)
)
CORE_POST = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == bindparam("aid"))
    .values(
        credits=ACCOUNTS.c.credits - bindparam("c"),
        reserved_credits=ACCOUNTS.c.reserved_credits - bindparam("x"),
    )
    .returning(ACCOUNTS.c.credits)
)
CORE_JOB_DONE = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("jid"))
    .values(status="succeeded", credits_charged=bindparam("c"), finished_at=bindparam("now"))
)


@dataclass(frozen=True)
class Accounts:
    billing: list[str]
    core: list[str]
    raw: list[str]


@dataclass(frozen=True)
class Result:
    db: str
    shape: str
    threads: int
    pairs: int
    billing_seconds: float
    core_seconds: float
    raw_seconds: float
    violations: int

    @property
    def billing_rate(self) -> float:
        return self.pairs / self.billing_seconds

    @property
    def core_rate(self) -> float:
        return self.pairs / self.core_seconds

    @property
    def raw_rate(self) -> float:
        return self.pairs / self.raw_seconds

    @property
    def ratio(self) -> float:
        return self.billing_rate / self.raw_rate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list of backends")
    parser.add_argument("--pairs", type=int, default=2500, help="timed pairs per loop and combo")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts in the spread shape")
    parser.add_argument("--threads", type=int, default=1, help="client threads per loop")
    parser.add_argument("--rounds", type=int, default=5, help="raw/core/billing alternations")
    parser.add_argument("--warmup", type=int, default=50, help="untimed pairs per loop")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.accounts, args.warmup, args.rounds = 100, 50, 5, 1
    args.db = [name.strip() for name in args.db.split(",") if name.strip()]
    if not set(args.db) <= {"sqlite", "postgresql"}:
        parser.error("--db takes sqlite and/or postgresql")
    if min(args.pairs, args.accounts, args.threads, args.rounds) < 1 or args.warmup < 0:
        parser.error("--pairs, --accounts, --threads, --rounds must be >= 1")
    if args.threads > 10:
        parser.error("--threads is at most 10 (the engine pool holds 15 connections)")
    return args


# --- the two loops -----------------------------------------------------------------------


def billing_pair(url: str, account_id: str) -> None:
    """One job's ledger life: reserve at submission, settle after the provider answered."""
    job_id = new_id("job")
    with transaction(url) as session:
        session.add(
            Job(
                id=job_id, account_id=account_id, operation="clustering", input={},
                model="gpt-4o-mini", status="queued", reserved_credits=HOLD,
            )
        )  # fmt: skip
        session.flush()
        ledger.reserve(session, account_id, job_id, HOLD, TTL)
    with transaction(url) as session:
        posted = ledger.settle(session, job_id, CHARGE, USAGE)
        if posted is None:
            raise RuntimeError(f"settle found no open hold for {job_id}")
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", credits_charged=-posted.amount, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def core_pair(engine: Engine, account_id: str) -> None:
    """The billing pair's statements and rows without the ORM (diagnostic, not a target)."""
    job_id, now = new_id("job"), utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(JOBS),
            {"id": job_id, "account_id": account_id, "operation": "clustering", "input": {},
             "model": "gpt-4o-mini", "status": "queued", "reserved_credits": HOLD},
        )  # fmt: skip
        if conn.execute(CORE_RESERVE, {"aid": account_id, "x": HOLD}).rowcount != 1:
            raise RuntimeError(f"core reserve refused on {account_id}")
        conn.execute(
            insert(HOLDS),
            {"account_id": account_id, "job_id": job_id, "amount": HOLD, "status": "held",
             "expires_at": now + TTL},
        )  # fmt: skip
    with engine.begin() as conn:
        _core_settle(conn, job_id, utcnow())


def _core_settle(conn: Connection, job_id: str, now: object) -> None:
    hold = conn.execute(CORE_CLOSE_HOLD, {"jid": job_id, "now": now}).one()
    credits = min(CHARGE.credits, hold.amount)
    balance = conn.execute(
        CORE_POST, {"aid": hold.account_id, "c": credits, "x": hold.amount}
    ).scalar_one()
    conn.execute(
        insert(TXNS),
        {"account_id": hold.account_id, "type": "deduction", "amount": -credits,
         "balance_after": balance, "description": f"{USAGE.operation} on {USAGE.model}",
         "job_id": job_id, "metadata": {"hold": hold.amount, "estimate_miss": False}},
    )  # fmt: skip
    conn.execute(
        insert(LOGS),
        {"account_id": hold.account_id, "job_id": job_id, "site_id": None,
         "operation": USAGE.operation, "model": USAGE.model, "tokens_in": USAGE.tokens_in,
         "tokens_out": USAGE.tokens_out, "images": 0, "credits": credits,
         "cost_usd": CHARGE.cost_usd, "items_created": USAGE.items_created},
    )  # fmt: skip
    conn.execute(CORE_JOB_DONE, {"jid": job_id, "c": credits, "now": now})


def raw_pair(engine: Engine, account_id: str) -> None:
    """The floor: the same two balance moves as bare single-statement transactions."""
    with engine.begin() as conn:
        if conn.execute(RESERVE_SQL, {"x": HOLD, "id": account_id}).rowcount != 1:
            raise RuntimeError(f"raw reserve refused on {account_id}")
    with engine.begin() as conn:
        conn.execute(SETTLE_SQL, {"c": CHARGE.credits, "x": HOLD, "id": account_id})


def timed(pair: Callable[[str], None], accounts: Sequence[str], n: int, threads: int) -> float:
    """Run n pairs round robin over `accounts` on `threads` threads; wall seconds."""
    errors: list[BaseException] = []
    start_gate = threading.Barrier(threads + 1)

    def work(offset: int) -> None:
        start_gate.wait()
        try:
            for i in range(offset, n, threads):
                pair(accounts[i % len(accounts)])
        except BaseException as exc:
            errors.append(exc)

    if threads == 1:
        start = time.perf_counter()
        for i in range(n):
            pair(accounts[i % len(accounts)])
        return time.perf_counter() - start
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    start_gate.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


# --- setup and bookkeeping ---------------------------------------------------------------


def prepare(url: str, spread: int) -> Accounts:
    """Migrate, seed, and create 3 x `spread` active accounts funded by ledger grants."""
    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    with transaction(url) as session:
        accounts = [Account(name=f"bench-{i}", status="active") for i in range(3 * spread)]
        session.add_all(accounts)
        session.flush()
        for account in accounts:
            ledger.grant(session, account.id, FUNDING, "adjustment", "bench funding")
        ids = [account.id for account in accounts]
    return Accounts(billing=ids[:spread], core=ids[spread : 2 * spread], raw=ids[2 * spread :])


def snapshot(engine: Engine, ids: Sequence[str]) -> dict[str, int]:
    query = select(Account.id, Account.credits).where(
        Account.id.in_(bindparam("ids", expanding=True))
    )
    with engine.connect() as conn:
        return {row.id: row.credits for row in conn.execute(query, {"ids": list(ids)})}


def restore(engine: Engine, credits: dict[str, int]) -> None:
    """Give the raw accounts back what the raw loop took, so the ledger audit balances."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE accounts SET credits = :credits WHERE id = :id AND reserved_credits = 0"),
            [{"id": k, "credits": v} for k, v in credits.items()],
        )
    if snapshot(engine, list(credits)) != credits:
        raise RuntimeError("raw accounts were not restored (a hold left open?)")


def run_combo(db: str, url: str, shape: str, ids: Accounts, args: argparse.Namespace) -> Result:
    """Raw, core and billing loops alternating `--rounds` times; then restore and audit."""
    engine = get_engine(url)
    before = snapshot(engine, ids.raw)
    loops: list[tuple[Callable[[str], None], list[str]]] = [
        (lambda account_id: raw_pair(engine, account_id), ids.raw),
        (lambda account_id: core_pair(engine, account_id), ids.core),
        (lambda account_id: billing_pair(url, account_id), ids.billing),
    ]
    for pair, accounts in loops:
        timed(pair, accounts, args.warmup, 1)
    seconds = [0.0, 0.0, 0.0]
    for r in range(args.rounds):
        n = args.pairs // args.rounds + (r < args.pairs % args.rounds)
        for i, (pair, accounts) in enumerate(loops):
            seconds[i] += timed(pair, accounts, n, args.threads)
    restore(engine, before)
    with transaction(url) as session:
        violations = audit(session)
    for violation in violations[:10]:
        print("  VIOLATION:", violation)
    raw_s, core_s, billing_s = seconds
    result = Result(db, shape, args.threads, args.pairs, billing_s, core_s, raw_s, len(violations))
    print(
        f"{db:<10} {shape:<13} billing {result.billing_rate:7.1f}/s  core {result.core_rate:7.1f}/s"
        f"  raw {result.raw_rate:7.1f}/s  billing/raw {result.ratio:.3f}"
        f"  audit violations {len(violations)}",
        flush=True,
    )
    return result


def run_backend(db: str, url: str, args: argparse.Namespace) -> list[Result]:
    accounts = prepare(url, args.accounts)
    hot = Accounts(accounts.billing[:1], accounts.core[:1], accounts.raw[:1])
    return [
        run_combo(db, url, "hot (1)", hot, args),
        run_combo(db, url, f"spread ({args.accounts})", accounts, args),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"pairs={args.pairs} (in {args.rounds} raw/core/billing alternations) "
        f"warmup={args.warmup} "
        f"threads={args.threads} accounts={args.accounts}",
        flush=True,
    )
    results: list[Result] = []
    with ExitStack() as stack:
        stack.callback(dispose_engines)
        for db in args.db:
            if db == "sqlite":
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aijobs-bench-"))
                url = f"sqlite:///{tmp}/ledger.db"
                results += run_backend(db, url, args)
            else:
                with PostgresServer(dbname="aijobs_bench") as server:
                    try:
                        results += run_backend(db, server.url, args)
                    finally:
                        dispose_engines()
    print()
    print_table(
        ["db", "shape", "threads", "pairs", "billing/s", "raw/s", "billing/raw", "core/s",
         "core/raw", "audit"],
        [
            [r.db, r.shape, r.threads, r.pairs, r.billing_rate, r.raw_rate, f"{r.ratio:.3f}",
             r.core_rate, f"{r.core_rate / r.raw_rate:.3f}", r.violations]
            for r in results
        ],
        left=2,
    )  # fmt: skip
    print("billing/raw = the figure the project aims to keep >= 0.6; core = the same ledger")
    print("statements as prebuilt Core on a Connection (no ORM Session), for diagnosis only.")
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
