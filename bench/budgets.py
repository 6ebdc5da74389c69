"""What spending budgets cost a submission: `submit_job` per second, same database.

Three loops, each submission its own transaction followed by `runs.cancel_job` in a second
one (so open holds do not pile up), all timed alike:

  bare        `submit_job` with the budget check replaced by a no-op: the hot path as it
              was before budgets existed (the baseline)
  no budget   `submit_job` as shipped, for an account without a budget: the check
              returns before touching the database
  budget      an account with a monthly budget (large enough never to refuse): the check
              locks the account row and sums the period's charges and open holds; the
              account carries `--history` settled charges this period

`no budget / bare` is the figure that must stay ~1.0 (accounts without a budget pay
nothing). The loops alternate `--rounds` times; afterwards `billing.audit.audit` must
return [].

    .venv/bin/python -m bench.budgets              # both backends (~40 s)
    .venv/bin/python -m bench.budgets --quick      # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import print_table
from billing import catalog, ledger, runs
from billing.audit import audit
from billing.pricing import Usage
from billing.submission import JobRequest, submit_job
from models import Account, Plan, new_id, utcnow
from models.db import dispose_engines, transaction
from ops.cli import migrate
from ops.postgres_server import PostgresServer

TTL = timedelta(minutes=15)
REQUEST = JobRequest(operation="clustering", input={"keywords": ["running shoes", "trail"]})
LOOPS = ("bare", "no budget", "budget")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list of backends")
    parser.add_argument("--jobs", type=int, default=600, help="timed submissions per round")
    parser.add_argument("--rounds", type=int, default=3, help="loop alternations")
    parser.add_argument("--history", type=int, default=1000, help="charges this period")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.rounds, args.history = 20, 1, 20
    return args


def make_account(url: str, budget: int | None, history: int) -> str:
    """An active Scale account, funded, with `history` real settled charges this period
    (submitted, started and completed as a worker would: the audit checks each)."""
    with transaction(url) as session:
        plan = session.query(Plan).filter_by(slug="scale").one()
        account = Account(name="bench", plan=plan, status="active", period_start=utcnow())
        account.budget_monthly_credits = budget
        session.add(account)
        session.flush()
        ledger.grant(session, account.id, 100_000_000, "adjustment", "bench funding")
        for _ in range(history):  # past charges the budget check has to sum
            job_id = submit_job(session, account, REQUEST, TTL).job.id
            run = runs.start_job(session, job_id)
            assert isinstance(run, runs.JobRun)
            runs.complete_job(session, run, Usage(tokens_in=50, tokens_out=50), {}, [])
        return account.id


def submit_and_release(url: str, account_id: str) -> None:
    with transaction(url) as session:
        account = session.get(Account, account_id)
        assert account is not None
        job_id = submit_job(session, account, REQUEST, TTL).job.id
    with transaction(url) as session:
        runs.cancel_job(session, account_id, job_id)  # releases the hold, frees the slot


def timed(loop: Callable[[], None], jobs: int) -> float:
    started = time.perf_counter()
    for _ in range(jobs):
        loop()
    return time.perf_counter() - started


def run(url: str, args: argparse.Namespace) -> list[list[object]]:
    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    plain = make_account(url, None, args.history)
    limited = make_account(url, 10**9, args.history)
    loops: dict[str, Callable[[], None]] = {
        "bare": lambda: submit_and_release(url, plain),
        "no budget": lambda: submit_and_release(url, plain),
        "budget": lambda: submit_and_release(url, limited),
    }
    seconds = dict.fromkeys(LOOPS, 0.0)
    for name in LOOPS:  # warm-up
        with _bare(name):
            timed(loops[name], 10)
    for _ in range(args.rounds):
        for name in LOOPS:
            with _bare(name):
                seconds[name] += timed(loops[name], args.jobs)
    with transaction(url) as session:
        problems = audit(session)
    if problems:
        raise SystemExit("audit failed:\n" + "\n".join(problems))
    total = args.jobs * args.rounds
    bare = total / seconds["bare"]
    return [[url.split(":")[0], name, total, total / seconds[name], (total / seconds[name]) / bare]
            for name in LOOPS]  # fmt: skip


def _bare(name: str) -> ExitStack:
    stack = ExitStack()
    if name == "bare":
        stack.enter_context(mock.patch("billing.budgets.check", return_value=None))
    return stack


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[list[object]] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for db in args.db.split(","):
            if db == "postgresql":
                url = stack.enter_context(PostgresServer(dbname="aijobs_bench")).url
            else:
                url = f"sqlite:///{tmp}/budgets-{new_id('db')}.db"
            rows += run(url, args)
            dispose_engines()
    print_table(["db", "loop", "jobs", "submit+release/s", "vs bare"], rows, left=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
