"""Small factories for billing tests, plus entry points for spawned test processes.

Credits always enter through `ledger.grant`, so an account made here passes the audit.
The `*_in_process` functions run in `multiprocessing` "spawn" children: they import
only project code and talk to the database named by the URL they are given.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from billing import ledger
from billing.operations import get_operation, validate_input
from billing.policy import resolve_model
from billing.pricing import Usage
from billing.runs import complete_job, start_job
from billing.submission import JobRequest, submit_job
from models import Account, AIModelConfig, CreditReservation, Job, Plan, new_id, utcnow
from models.db import get_engine, transaction

HOLD_TTL = timedelta(hours=1)

# A cheap text job: hold = ceil(bound / 100) credits on gpt-4o-mini.
CLUSTERING = {"operation": "clustering", "input": {"keywords": ["running shoes", "trail shoes"]}}
# The cheapest job there is: one image on hidream-full holds 1 credit.
IMAGE = {"operation": "image_generation", "input": {"prompt": "a lighthouse", "count": 1}}


def make_account(
    session: Session,
    plan_slug: str | None = "starter",
    credits: int = 10_000,
    status: str = "active",
    name: str = "test account",
) -> Account:
    """An account on `plan_slug` holding `credits`, posted by one `topup` grant."""
    plan = None
    if plan_slug is not None:
        plan = session.scalar(select(Plan).where(Plan.slug == plan_slug))
        assert plan is not None, f"plan {plan_slug!r} is not seeded"
    account = Account(name=name, plan=plan, status=status)
    session.add(account)
    session.flush()
    if credits:
        ledger.grant(session, account.id, credits, "adjustment", "test funding")
    session.flush()
    session.refresh(account)
    return account


def make_job(
    session: Session,
    account: Account,
    *,
    operation: str = "image_generation",
    job_input: dict[str, Any] | None = None,
    model: str = "hidream-full",
    status: str = "queued",
) -> Job:
    """A bare job row with no hold, for tests that drive `ledger` directly."""
    job = Job(
        id=new_id("job"),
        account_id=account.id,
        operation=operation,
        input=job_input or {"prompt": "a lighthouse", "count": 1},
        model=model,
        status=status,
    )
    session.add(job)
    session.flush()
    return job


def request(
    body: dict[str, Any] = CLUSTERING, *, key: str | None = None, model: str | None = None
) -> JobRequest:
    return JobRequest(
        operation=body["operation"], input=body["input"], model=model, idempotency_key=key
    )


def hold_for(session: Session, account: Account, job_request: JobRequest) -> int:
    """What `submit_job` will hold for this request (the same price list and policy)."""
    operation = get_operation(job_request.operation)
    job_input = validate_input(operation, job_request.input)
    if operation.name == "clustering":
        assert not job_input.pop("keyword_ids"), "hold_for does not expand keyword ids"
    model = resolve_model(session, account, operation, job_request.model)
    return operation.hold(model, job_input)


def submit(session: Session, account_id: str, job_request: JobRequest) -> Job:
    account = session.get(Account, account_id)
    assert account is not None
    return submit_job(session, account, job_request, HOLD_TTL).job


def balances(session: Session, account_id: str) -> tuple[int, int]:
    """(credits, reserved_credits) as the database has them now."""
    row = session.execute(
        select(Account.credits, Account.reserved_credits).where(Account.id == account_id)
    ).one()
    return int(row.credits), int(row.reserved_credits)


def open_holds(session: Session, account_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(CreditReservation)
            .where(CreditReservation.account_id == account_id, CreditReservation.status == "held")
        )
        or 0
    )


@contextmanager
def catalog_restored(url: str) -> Iterator[None]:
    """Put every plan and model row back as it was, for tests that edit the catalog.

    `catalog.seed` (which the `db_url` fixture re-runs) only rewrites the keys the
    shipped lists name, so e.g. `is_active` would otherwise leak into later tests.
    """
    tables = (Plan.__table__, AIModelConfig.__table__)
    with transaction(url) as session:
        saved = {t: [dict(row._mapping) for row in session.execute(select(t))] for t in tables}
    try:
        yield
    finally:
        with transaction(url) as session:
            # Defaults off first, so the one-default-per-type index holds while restoring.
            session.execute(update(AIModelConfig.__table__).values(is_default=False))
            for table, rows in saved.items():
                key = next(iter(table.primary_key.columns))
                for row in rows:
                    session.execute(update(table).where(key == row[key.name]).values(**row))


@contextmanager
def statements_of(url: str) -> Iterator[list[str]]:
    """The SQL statements the engine of `url` sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- spawned-process entry points ------------------------------------------------------


def _child_setup(url: str) -> None:
    from settings import reload_settings

    os.environ["DATABASE_URL"] = url
    reload_settings()


def submit_in_process(url: str, account_id: str, attempts: int, barrier: Any, results: Any) -> None:
    """Try `attempts` submissions, each in its own transaction; report the outcome counts."""
    from billing.errors import InsufficientCredits
    from models.db import dispose_engines, transaction

    _child_setup(url)
    outcome = {"pid": os.getpid(), "ok": [], "insufficient": 0, "errors": []}
    try:
        barrier.wait(60)
        for _ in range(attempts):
            try:
                with transaction(url) as session:
                    job = submit(session, account_id, request())
                outcome["ok"].append(job.id)
            except InsufficientCredits:
                outcome["insufficient"] += 1
            except Exception:
                outcome["errors"].append(traceback.format_exc())
    except Exception:
        outcome["errors"].append(traceback.format_exc())
    finally:
        dispose_engines()
        results.put(outcome)


def cycles_in_process(
    url: str, account_id: str, cycles: int, usage: tuple[int, int], barrier: Any, results: Any
) -> None:
    """`cycles` x (submit; start; settle), each step its own transaction, like API + worker."""
    from models.db import dispose_engines, transaction

    _child_setup(url)
    outcome = {"pid": os.getpid(), "settled": 0, "errors": [], "seconds": 0.0}
    try:
        barrier.wait(60)
        started = time.monotonic()
        for _ in range(cycles):
            try:
                with transaction(url) as session:
                    job_id = submit(session, account_id, request()).id
                with transaction(url) as session:
                    run = start_job(session, job_id)
                assert run is not None, f"job {job_id} did not start"
                with transaction(url) as session:
                    settled = complete_job(session, run, Usage(*usage), {"ok": True}, [])
                assert settled, f"job {job_id} did not settle"
                outcome["settled"] += 1
            except Exception:
                outcome["errors"].append(traceback.format_exc())
        outcome["seconds"] = time.monotonic() - started
    except Exception:
        outcome["errors"].append(traceback.format_exc())
    finally:
        dispose_engines()
        results.put(outcome)


def admission_churn_in_process(
    url: str, account_id: str, rounds: int, barrier: Any, results: Any
) -> None:
    """`rounds` x (submit; start the account's oldest dispatched job and finish it), each
    step its own transaction, racing the other processes; reports the most slots in use
    seen after any commit."""
    from billing.admission import holds_slot
    from models.db import dispose_engines, transaction

    _child_setup(url)
    outcome = {"pid": os.getpid(), "finished": 0, "max_slots": 0, "errors": []}

    def slots() -> int:
        with transaction(url) as session:
            query = select(func.count()).where(Job.account_id == account_id, holds_slot())
            return int(session.scalar(query) or 0)

    try:
        barrier.wait(60)
        for n in range(rounds):
            try:
                with transaction(url) as session:
                    submit(session, account_id, request(IMAGE))
                outcome["max_slots"] = max(outcome["max_slots"], slots())
                if n % 2:
                    continue
                with transaction(url) as session:
                    job_id = session.scalar(
                        select(Job.id)
                        .where(Job.account_id == account_id, Job.status == "queued", holds_slot())
                        .order_by(Job.created_at)
                    )
                    run = start_job(session, job_id) if job_id else None
                if run is not None:
                    with transaction(url) as session:
                        if complete_job(session, run, Usage(images=1), {}, []):
                            outcome["finished"] += 1
                outcome["max_slots"] = max(outcome["max_slots"], slots())
            except Exception:
                outcome["errors"].append(traceback.format_exc())
    except Exception:
        outcome["errors"].append(traceback.format_exc())
    finally:
        dispose_engines()
        results.put(outcome)


def now_plus(**delta: float) -> Any:
    return utcnow() + timedelta(**delta)


def increments_in_process(path: str, times: int, barrier: Any, results: Any) -> None:
    """`times` read-then-write increments of one counter, each its own transaction: a
    lost update would show if two processes ever wrote at once."""
    from sqlalchemy import text

    from models.sqlite import make_sqlite_engine

    engine = make_sqlite_engine(f"sqlite:///{path}")
    errors = []
    try:
        barrier.wait(60)
        for _ in range(times):
            with engine.begin() as connection:
                value = connection.execute(text("SELECT value FROM counter")).scalar_one()
                connection.execute(text("UPDATE counter SET value = :v"), {"v": value + 1})
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        engine.dispose()
        results.put(errors)


def hold_writer_in_process(path: str, ready: Any) -> None:
    """Take the writer lock and keep it until killed."""
    from sqlalchemy import text

    from models.sqlite import make_sqlite_engine

    engine = make_sqlite_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE counter SET value = value + 1"))
        ready.set()
        time.sleep(600)


def hold_write_transaction_in_process(url: str, ready: Any) -> None:
    """Open a write transaction on `url` (on SQLite: hold the writer lock) until killed."""
    from sqlalchemy import text

    _child_setup(url)
    with transaction(url) as session:
        session.execute(text("UPDATE accounts SET name = name WHERE id = 'nobody'"))
        ready.set()
        time.sleep(600)
