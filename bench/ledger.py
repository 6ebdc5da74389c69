"""Reserve+settle pairs/s through `billing/` against raw conditional UPDATEs, same database.

Three loops, each pair two transactions, on the same engine (same SQLite pragmas and
`BEGIN IMMEDIATE`, same pool):

  raw     tx 1: UPDATE accounts SET reserved = reserved + :x
                WHERE id = :id AND credits - reserved >= :x
          tx 2: UPDATE accounts SET credits = credits - :c, reserved = reserved - :x
                WHERE id = :id
  ledger  tx 1: `ledger.reserve`   (balance check + hold row)
          tx 2: `ledger.settle`    (hold closed once, balance posted, deduction + usage log)
          The job rows the holds point at are inserted before the timer starts and marked
          succeeded after it stops: they belong to the job, not to the ledger.
  job     what a submission and a worker do around the ledger:
          tx 1: INSERT the Job through the ORM + `ledger.reserve`;
          tx 2: `ledger.settle` + the job's UPDATE to `succeeded` (as `complete_job`).

`ledger/raw` is the figure the project aims to keep >= 0.6. Each backend (SQLite temp
file; PostgreSQL from `PostgresServer`) runs two shapes: one hot account, and
`--accounts` accounts in round robin. Each loop has its own accounts; afterwards the raw
accounts' credits are put back and `billing.audit.audit` must return [].

    .venv/bin/python -m bench.ledger                 # both backends, both shapes (~60 s)
    .venv/bin/python -m bench.ledger --db sqlite --threads 4
    .venv/bin/python -m bench.ledger --quick         # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # `python bench/ledger.py` (make bench)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, bindparam, insert, select, text, update

from bench import each_backend, print_table
from billing import catalog, ledger
from billing.audit import audit
from billing.ledger import UsageRecord
from billing.pricing import Charge
from models import Account, Job, new_id, utcnow
from models.db import get_engine, transaction
from ops.cli import migrate

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
JOBS_SUCCEEDED = (
    update(Job)
    .where(Job.id.in_(bindparam("ids", expanding=True)))
    .values(status="succeeded", credits_charged=CHARGE.credits)
)
LOOPS = ("raw", "ledger", "job")
Item = TypeVar("Item")


@dataclass(frozen=True)
class Result:
    db: str
    shape: str
    threads: int
    pairs: int
    seconds: dict[str, float]
    violations: int

    def rate(self, loop: str) -> float:
        return self.pairs / self.seconds[loop]

    def ratio(self, loop: str) -> float:
        return self.rate(loop) / self.rate("raw")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list of backends")
    parser.add_argument("--pairs", type=int, default=2500, help="timed pairs per loop and combo")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts in the spread shape")
    parser.add_argument("--threads", type=int, default=1, help="client threads per loop")
    parser.add_argument("--rounds", type=int, default=5, help="raw/ledger/job alternations")
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


# --- the three pairs ---------------------------------------------------------------------


def raw_pair(engine: Engine, account_id: str) -> None:
    """The floor: the same two balance moves as bare single-statement transactions."""
    with engine.begin() as conn:
        if conn.execute(RESERVE_SQL, {"x": HOLD, "id": account_id}).rowcount != 1:
            raise RuntimeError(f"raw reserve refused on {account_id}")
    with engine.begin() as conn:
        conn.execute(SETTLE_SQL, {"c": CHARGE.credits, "x": HOLD, "id": account_id})


def ledger_pair(url: str, account_and_job: tuple[str, str]) -> None:
    """A hold and its settlement through `billing.ledger`, each its own transaction."""
    account_id, job_id = account_and_job
    with transaction(url) as session:
        ledger.reserve(session, account_id, job_id, HOLD, TTL)
    with transaction(url) as session:
        if ledger.settle(session, job_id, CHARGE, USAGE) is None:
            raise RuntimeError(f"settle found no open hold for {job_id}")


def job_pair(url: str, account_id: str) -> None:
    """One job's ledger life as submission and worker run it, job rows included."""
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


def timed(pair: Callable[[Item], None], items: Sequence[Item], threads: int) -> float:
    """Run `pair` once per item, items dealt round robin to `threads` threads; wall seconds."""
    if threads == 1:
        start = time.perf_counter()
        for item in items:
            pair(item)
        return time.perf_counter() - start
    errors: list[BaseException] = []
    start_gate = threading.Barrier(threads + 1)

    def work(offset: int) -> None:
        start_gate.wait()
        try:
            for item in items[offset::threads]:
                pair(item)
        except BaseException as exc:
            errors.append(exc)

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


def round_robin(accounts: Sequence[str], n: int) -> list[str]:
    return [accounts[i % len(accounts)] for i in range(n)]


def queued_jobs(engine: Engine, accounts: Sequence[str], n: int) -> list[tuple[str, str]]:
    """Insert n queued jobs round robin over `accounts` (untimed): what holds point at."""
    items = [(account_id, new_id("job")) for account_id in round_robin(accounts, n)]
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Job),
            [
                {"id": job_id, "account_id": account_id, "operation": "clustering",
                 "input": {}, "model": "gpt-4o-mini", "status": "queued",
                 "reserved_credits": HOLD, "created_at": now}
                for account_id, job_id in items
            ],
        )  # fmt: skip
    return items


def mark_succeeded(engine: Engine, items: Sequence[tuple[str, str]]) -> None:
    """The job half of `complete_job` for the ledger loop's jobs (untimed)."""
    with engine.begin() as conn:
        conn.execute(JOBS_SUCCEEDED, {"ids": [job_id for _, job_id in items]})


@dataclass(frozen=True)
class Accounts:
    raw: list[str]
    ledger: list[str]
    job: list[str]

    def first(self) -> Accounts:
        return Accounts(self.raw[:1], self.ledger[:1], self.job[:1])


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
    return Accounts(raw=ids[:spread], ledger=ids[spread : 2 * spread], job=ids[2 * spread :])


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


def run_round(url: str, ids: Accounts, n: int, threads: int) -> dict[str, float]:
    """One timed pass of each loop over n pairs."""
    engine = get_engine(url)
    jobs = queued_jobs(engine, ids.ledger, n)
    seconds = {
        "raw": timed(lambda a: raw_pair(engine, a), round_robin(ids.raw, n), threads),
        "ledger": timed(lambda item: ledger_pair(url, item), jobs, threads),
        "job": timed(lambda a: job_pair(url, a), round_robin(ids.job, n), threads),
    }
    mark_succeeded(engine, jobs)
    return seconds


def run_combo(db: str, url: str, shape: str, ids: Accounts, args: argparse.Namespace) -> Result:
    """Warm up, alternate the loops `--rounds` times; then restore and audit."""
    engine = get_engine(url)
    before = snapshot(engine, ids.raw)
    run_round(url, ids, args.warmup, 1)
    seconds = dict.fromkeys(LOOPS, 0.0)
    for r in range(args.rounds):
        n = args.pairs // args.rounds + (r < args.pairs % args.rounds)
        for loop, spent in run_round(url, ids, n, args.threads).items():
            seconds[loop] += spent
    restore(engine, before)
    with transaction(url) as session:
        violations = audit(session)
    for violation in violations[:10]:
        print("  VIOLATION:", violation)
    result = Result(db, shape, args.threads, args.pairs, seconds, len(violations))
    print(
        f"{db:<10} {shape:<13} raw {result.rate('raw'):7.1f}/s"
        f"  ledger {result.rate('ledger'):7.1f}/s ({result.ratio('ledger'):.3f})"
        f"  job {result.rate('job'):7.1f}/s ({result.ratio('job'):.3f})"
        f"  audit violations {len(violations)}",
        flush=True,
    )
    return result


def run_backend(db: str, url: str, args: argparse.Namespace) -> list[Result]:
    accounts = prepare(url, args.accounts)
    return [
        run_combo(db, url, "hot (1)", accounts.first(), args),
        run_combo(db, url, f"spread ({args.accounts})", accounts, args),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"pairs={args.pairs} (in {args.rounds} raw/ledger/job alternations) "
        f"warmup={args.warmup} threads={args.threads} accounts={args.accounts}",
        flush=True,
    )
    results: list[Result] = []
    for db, url in each_backend(args.db, "ledger"):
        results += run_backend(db, url, args)
    print()
    print_table(
        ["db", "shape", "threads", "pairs", "raw/s", "ledger/s", "ledger/raw", "job/s",
         "job/raw", "audit"],
        [
            [r.db, r.shape, r.threads, r.pairs, r.rate("raw"), r.rate("ledger"),
             f"{r.ratio('ledger'):.3f}", r.rate("job"), f"{r.ratio('job'):.3f}", r.violations]
            for r in results
        ],
        left=2,
    )  # fmt: skip
    print("ledger/raw = the figure the project aims to keep >= 0.6 (reserve + settle through")
    print("billing.ledger); job/raw adds the job row insert and status update around them.")
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
