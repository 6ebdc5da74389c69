"""Per-account concurrency caps (billing/admission.py): jobs beyond the cap wait queued in
the database, FIFO per account, and every ending hands its slot to the next; many
processes submitting and finishing at once never put more than the cap in flight."""

from __future__ import annotations

import multiprocessing
from typing import Any

from sqlalchemy import event, func, select

from billing import admission, plans, runs
from billing.audit import audit
from billing.pricing import Usage
from billing.runs import complete_job, fail_job, start_job
from billing.submission import submit_job
from models import Account, Job, utcnow
from models.db import transaction
from tests.factories import (
    HOLD_TTL,
    IMAGE,
    admission_churn_in_process,
    catalog_restored,
    make_account,
    request,
    submit,
)


def new_account(url: str, plan: str = "free-trial", credits: int = 10_000) -> str:
    with transaction(url) as session:
        return make_account(session, plan_slug=plan, credits=credits).id


def submit_many(url: str, account_id: str, n: int) -> list[tuple[str, list[str]]]:
    """Submit n jobs; for each, its id and the ids admitted by its submission."""
    out = []
    for _ in range(n):
        with transaction(url) as session:
            acct = session.get(Account, account_id)
            assert acct is not None
            submission = submit_job(session, acct, request(IMAGE), HOLD_TTL)
            out.append((submission.job.id, [d.job_id for d in submission.dispatches]))
    return out


def slot_holders(url: str, account_id: str) -> set[str]:
    with transaction(url) as session:
        return set(
            session.scalars(
                select(Job.id).where(Job.account_id == account_id, admission.holds_slot())
            )
        )


def test_jobs_beyond_the_cap_wait_and_each_ending_admits_the_oldest(db_url: str) -> None:
    account_id = new_account(db_url)  # free-trial: 2 slots
    submitted = submit_many(db_url, account_id, 5)
    ids = [job_id for job_id, _ in submitted]

    assert [admitted for _, admitted in submitted] == [[ids[0]], [ids[1]], [], [], []]
    assert slot_holders(db_url, account_id) == {ids[0], ids[1]}
    with transaction(db_url) as session:
        # A waiting job is not started by a stray message: the broker carries admitted work.
        assert start_job(session, ids[2]) is None
        run = start_job(session, ids[0])
        assert run is not None
    with transaction(db_url) as session:
        ending = complete_job(session, run, Usage(images=1), {}, [])
    assert [d.job_id for d in ending.dispatches] == [ids[2]]
    with transaction(db_url) as session:
        assert not runs.cancel_job(session, account_id, ids[3]).dispatches  # it was waiting
    with transaction(db_url) as session:
        ending = fail_job(session, ids[1], "provider_unavailable", "down")
    assert [d.job_id for d in ending.dispatches] == [ids[4]]
    assert slot_holders(db_url, account_id) == {ids[2], ids[4]}
    with transaction(db_url) as session:
        acct = session.get(Account, account_id)
        assert admission.concurrency_view(session, acct) == {"running": 2, "limit": 2, "queued": 0}
        assert audit(session) == []


def test_a_cancelled_dispatched_job_frees_its_slot(db_url: str) -> None:
    account_id = new_account(db_url)
    ids = [job_id for job_id, _ in submit_many(db_url, account_id, 3)]
    with transaction(db_url) as session:
        ending = runs.cancel_job(session, account_id, ids[0])
        assert session.get(Job, ids[0]).status == "cancelled"
    assert [d.job_id for d in ending.dispatches] == [ids[2]]
    with transaction(db_url) as session:
        assert start_job(session, ids[0]) is None  # its message arrives later: skipped
        assert audit(session) == []


def test_the_plans_cap_is_admin_editable_and_a_raised_cap_admits_waiting_jobs(
    db_url: str,
) -> None:
    with catalog_restored(db_url):
        account_id = new_account(db_url)
        ids = [job_id for job_id, _ in submit_many(db_url, account_id, 6)]
        with transaction(db_url) as session:
            plans.update_plan(session, "free-trial", {"max_concurrent_jobs": 4})
        with transaction(db_url) as session:
            admitted = admission.admit(session, account_id, utcnow())
        assert [d.job_id for d in admitted] == ids[2:4]
        assert slot_holders(db_url, account_id) == set(ids[:4])


def test_concurrency_counts_dispatched_and_running_jobs(db_url: str) -> None:
    account_id = new_account(db_url, plan="starter")
    ids = [job_id for job_id, _ in submit_many(db_url, account_id, 7)]
    with transaction(db_url) as session:
        assert start_job(session, ids[0]) is not None
        acct = session.get(Account, account_id)
        assert admission.concurrency_view(session, acct) == {"running": 5, "limit": 5, "queued": 2}


def test_many_processes_submitting_and_finishing_never_exceed_the_cap(db_url: str) -> None:
    """4 processes, each submitting and finishing jobs of one account with 3 slots: after
    every commit the slots in use are within the cap, and at rest exactly the oldest open
    jobs hold them (none leaked, none idle while jobs wait)."""
    with transaction(db_url) as session:  # the db_url fixture removes the plan after
        plans.create_plan(
            session, {"slug": "three", "name": "Three", "price": "1", "max_concurrent_jobs": 3}
        )
    account_id = new_account(db_url, plan="three", credits=100_000)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    children = [
        ctx.Process(
            target=admission_churn_in_process, args=(db_url, account_id, 12, barrier, results)
        )
        for _ in range(4)
    ]
    for child in children:
        child.start()
    outcomes: list[dict[str, Any]] = [results.get(timeout=240) for _ in children]
    for child in children:
        child.join(30)

    assert [o["errors"] for o in outcomes] == [[], [], [], []]
    assert max(o["max_slots"] for o in outcomes) == 3
    assert sum(o["finished"] for o in outcomes) > 0
    with transaction(db_url) as session:
        open_ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.account_id == account_id, Job.status.in_(("queued", "running")))
                .order_by(Job.created_at, Job.id)
            )
        )
        total = session.scalar(select(func.count()).where(Job.account_id == account_id))
        assert audit(session) == []
    assert total == 48
    assert slot_holders(db_url, account_id) == set(open_ids[:3])


def test_an_account_without_a_plan_runs_one_job_at_a_time(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug=None, credits=100)
        ids = [submit(session, acct.id, request(IMAGE)).id for _ in range(2)]
        assert admission.concurrency_limit(session, acct.id) == 1
    assert slot_holders(db_url, acct.id) == {ids[0]}


def _plan(session: Any, statement: Any, params: dict[str, Any]) -> str:
    """The database's plan for `statement` as it runs (PostgreSQL: seq scans off, so an
    index it can use shows; a partial index whose condition the query does not imply
    cannot): the statement runs once in a savepoint, rolled back, to capture its SQL."""
    connection = session.connection()
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        sent.append((sql, parameters))

    event.listen(connection, "before_cursor_execute", capture)
    try:
        with connection.begin_nested() as savepoint:
            connection.execute(statement, params)
            savepoint.rollback()
    finally:
        event.remove(connection, "before_cursor_execute", capture)
    sql, parameters = next((q, p) for q, p in sent if "SAVEPOINT" not in q)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = connection.exec_driver_sql("EXPLAIN " + sql, parameters)
    else:
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters)
    return "\n".join(str(row) for row in rows)


def test_admission_reads_only_the_partial_indexes(db_url: str) -> None:
    """Its work follows the jobs in flight and waiting, not the account's history: with
    bound status values the planner could not use `ix_jobs_slots` and walked every job
    the account ever had, twice per admission. The slots in use are counted once (the
    LIMIT's `CASE WHEN free > 0 THEN free` counted them twice)."""
    account_id = new_account(db_url)
    submit_many(db_url, account_id, 3)
    params = {"p_account": account_id, "p_now": utcnow()}
    with transaction(db_url) as session:
        plan = _plan(session, admission._ADMIT, params)
        assert plan.count("ix_jobs_slots") == 1, plan
        assert "ix_jobs_waiting" in plan, plan
        assert "ix_jobs_account_created" not in plan, plan
        count = (
            select(func.count())
            .select_from(Job)
            .where(Job.account_id == account_id, admission.holds_slot())
        )
        assert "ix_jobs_slots" in _plan(session, count, {"account_id_1": account_id})
