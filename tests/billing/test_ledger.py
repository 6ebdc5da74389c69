"""The two-phase credit ledger: reserve -> settle | release, grants, and its races.

Every test runs on SQLite and on PostgreSQL (the `db_url` fixture). The concurrency
tests at the bottom (`TestConcurrency`) are the issue's acceptance criteria: real
threads and real spawned processes against one account, then the audit.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, func, select

from billing import ledger
from billing.audit import audit
from billing.errors import AccountInactive, DuplicateReference, InsufficientCredits
from billing.ledger import UsageRecord
from billing.pricing import Charge
from models import (
    Account,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    Job,
    as_utc,
    new_id,
    utcnow,
)
from models.db import get_engine, session_factory, transaction
from tests import factories
from tests.factories import balances, hold_for, make_account, make_job, request, submit

TTL = timedelta(minutes=30)
USAGE = UsageRecord(
    operation="image_generation",
    model="hidream-full",
    tokens_in=0,
    tokens_out=0,
    images=2,
    site_id=None,
    items_created=2,
)


def charge(credits: int, *, miss: bool = False) -> Charge:
    return Charge(credits=credits, cost_usd=Decimal("0.020000"), estimate_miss=miss)


def count(session: Any, model: Any, **where: Any) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    return int(session.scalar(query) or 0)


def assert_audit_clean(url: str) -> None:
    with transaction(url) as session:
        assert audit(session) == []


def funded_job(url: str, credits: int = 1000, hold: int = 300, **account: Any) -> tuple[str, str]:
    """An account with `credits` and one job holding `hold` of them: (account_id, job_id)."""
    with transaction(url) as session:
        acct = make_account(session, credits=credits, **account)
        job = make_job(session, acct)
        ledger.reserve(session, acct.id, job.id, hold, TTL)
        return acct.id, job.id


# --- reserve -----------------------------------------------------------------------------


def test_reserve_holds_credits_without_posting(db_url: str) -> None:
    before = utcnow()
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)

    with transaction(db_url) as session:
        assert balances(session, account_id) == (1000, 300)
        hold = session.scalar(select(CreditReservation).where(CreditReservation.job_id == job_id))
        assert hold is not None
        assert (hold.status, hold.amount, hold.account_id) == ("held", 300, account_id)
        assert before + TTL <= as_utc(hold.expires_at) <= utcnow() + TTL
        # Only the funding grant is posted: a hold is not a transaction.
        assert count(session, CreditTransaction, account_id=account_id) == 1
        assert session.get(Account, account_id).available_credits == 700
    assert_audit_clean(db_url)


def test_reserve_insufficient_names_required_and_available_and_writes_nothing(db_url: str) -> None:
    account_id, _ = funded_job(db_url, credits=1000, hold=600)

    with transaction(db_url) as session:
        job = make_job(session, session.get(Account, account_id))
        with pytest.raises(InsufficientCredits) as refused:
            ledger.reserve(session, account_id, job.id, 401, TTL)
        assert refused.value.code == "insufficient_credits"
        assert refused.value.details == {"required": 401, "available": 400}
        session.flush()
        assert balances(session, account_id) == (1000, 600)
        assert count(session, CreditReservation, job_id=job.id) == 0

    with transaction(db_url) as session:
        ledger.reserve(session, account_id, job.id, 400, TTL)  # exactly what is left
        assert balances(session, account_id) == (1000, 1000)
    assert_audit_clean(db_url)


@pytest.mark.parametrize(("status", "amount"), [("active", 401), ("suspended", 10)])
def test_a_new_jobs_refused_reserve_writes_neither_the_job_nor_the_hold(
    db_url: str, status: str, amount: int
) -> None:
    """reserve_new_job: on PostgreSQL the job's INSERT rides on the reserve's statement,
    so a refusal (credits, status) writes no job row even inside the transaction; on
    SQLite the request's rollback removes it. Either way nothing is left."""
    with transaction(db_url) as session:
        account_id = make_account(session, credits=400, status=status).id
    row = {
        "id": new_id("job"), "account_id": account_id, "operation": "clustering",
        "input": {"keywords": ["a"]}, "model": "gpt-4o-mini", "status": "queued",
        "reserved_credits": amount, "credits_charged": 0, "attempts": 0,
        "request_hash": "h", "created_at": utcnow(),
    }  # fmt: skip
    with session_factory(db_url)() as session, session.begin():
        with pytest.raises((InsufficientCredits, AccountInactive)):
            ledger.reserve_new_job(session, row, amount, TTL)
        if db_url.startswith("postgresql"):
            assert session.get(Job, row["id"]) is None
        session.rollback()  # as a refused request does
    with transaction(db_url) as session:
        assert session.get(Job, row["id"]) is None
        assert count(session, CreditReservation, account_id=account_id) == 0
        assert balances(session, account_id) == (400, 0)

    if status == "active":
        with transaction(db_url) as session:
            ledger.reserve_new_job(session, {**row, "reserved_credits": 400}, 400, TTL)
        with transaction(db_url) as session:
            assert session.get(Job, row["id"]) is not None
            (held,) = session.scalars(
                select(CreditReservation.amount).where(CreditReservation.job_id == row["id"])
            )
            assert held == 400
            assert balances(session, account_id) == (400, 400)
    assert_audit_clean(db_url)


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
def test_reserve_refuses_inactive_accounts(db_url: str, status: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=1000, status=status)
        job = make_job(session, acct)
        with pytest.raises(AccountInactive) as refused:
            ledger.reserve(session, acct.id, job.id, 10, TTL)
        assert refused.value.code == f"account_{status}"
        session.flush()
        assert balances(session, acct.id) == (1000, 0)
        assert count(session, CreditReservation, account_id=acct.id) == 0


@pytest.mark.parametrize("status", ["trial", "active", "pending_payment"])
def test_reserve_allows_spending_statuses(db_url: str, status: str) -> None:
    account_id, _ = funded_job(db_url, credits=100, hold=10, status=status)
    with transaction(db_url) as session:
        assert balances(session, account_id) == (100, 10)


def test_reserve_rejects_a_non_positive_hold(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session)
        job = make_job(session, acct)
        with pytest.raises(ValueError, match="positive"):
            ledger.reserve(session, acct.id, job.id, 0, TTL)


# --- settle ------------------------------------------------------------------------------


def test_settle_posts_one_deduction_and_one_usage_log(db_url: str) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)

    with transaction(db_url) as session:
        posted = ledger.settle(session, job_id, charge(120), USAGE)
        assert posted is not None

    with transaction(db_url) as session:
        assert balances(session, account_id) == (880, 0)
        deduction = session.scalar(
            select(CreditTransaction).where(CreditTransaction.type == "deduction")
        )
        assert deduction is not None
        assert (deduction.account_id, deduction.job_id) == (account_id, job_id)
        assert (deduction.amount, deduction.balance_after) == (-120, 880)
        assert deduction.metadata_ == {"hold": 300, "estimate_miss": False}
        log = session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))
        assert log is not None
        assert (log.operation, log.model, log.images, log.items_created) == (
            "image_generation", "hidream-full", 2, 2,
        )  # fmt: skip
        assert (log.credits, log.cost_usd) == (120, Decimal("0.020000"))
        hold = session.scalar(select(CreditReservation).where(CreditReservation.job_id == job_id))
        assert hold is not None
        assert hold.status == "settled"
        assert hold.resolved_at is not None
        assert count(session, CreditUsageLog) == 1
        assert count(session, CreditTransaction, type="deduction") == 1
    _mark_succeeded(db_url, job_id, 120)
    assert_audit_clean(db_url)


def _mark_succeeded(url: str, job_id: str, charged: int) -> None:
    """What `complete_job` does around `settle`, so the audit sees a consistent job."""
    with transaction(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.credits_charged = "succeeded", charged


def _mark_failed(url: str, job_id: str) -> None:
    with transaction(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = "failed"


def test_settle_caps_the_charge_at_the_hold_and_logs_the_miss(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)

    with caplog.at_level(logging.WARNING, logger="billing.ledger"), transaction(db_url) as session:
        posted = ledger.settle(session, job_id, charge(300, miss=True), USAGE)
        assert posted is not None
        assert posted.amount == -300
        assert posted.metadata == {"hold": 300, "estimate_miss": True}

    misses = [r for r in caplog.records if "estimate miss" in r.getMessage()]
    assert len(misses) == 1
    assert job_id in misses[0].getMessage()
    assert misses[0].levelno == logging.WARNING
    with transaction(db_url) as session:
        assert balances(session, account_id) == (700, 0)


def test_settle_never_charges_more_than_the_hold(db_url: str) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)
    with transaction(db_url) as session:
        posted = ledger.settle(session, job_id, charge(5000, miss=True), USAGE)
        assert posted is not None
        assert posted.amount == -300
        assert posted.balance_after == 700
        log = session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))
        assert log is not None
        assert log.credits == 300
        deduction = session.scalar(
            select(CreditTransaction).where(CreditTransaction.job_id == job_id)
        )
        assert deduction is not None
        assert (deduction.amount, deduction.balance_after) == (-300, 700)
        assert deduction.metadata_ == {"hold": 300, "estimate_miss": True}
    with transaction(db_url) as session:
        assert balances(session, account_id) == (700, 0)


def test_ledger_steps_are_one_round_trip_each_on_postgresql(db_url: str) -> None:
    """PostgreSQL runs reserve, settle and release as one statement each (CTEs); SQLite,
    in-process, as the separate statements they are made of."""
    per_step = (1, 1, 1) if db_url.startswith("postgresql") else (4, 2, 2)
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = get_engine(db_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with transaction(db_url) as session:
            session.connection()
            statements.clear()
            ledger.settle(session, job_id, charge(100), USAGE)
            settled = len(statements)
            second = make_job(session, session.get(Account, account_id))
            statements.clear()
            ledger.reserve(session, account_id, second.id, 200, TTL)
            reserved = len(statements)
            statements.clear()
            assert ledger.release(session, second.id) == 200
            assert (settled, reserved, len(statements)) == per_step
    finally:
        event.remove(engine, "before_cursor_execute", record)
    with transaction(db_url) as session:
        assert balances(session, account_id) == (900, 0)


def test_settle_twice_changes_nothing_the_second_time(db_url: str) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)
    with transaction(db_url) as session:
        assert ledger.settle(session, job_id, charge(100), USAGE) is not None

    with transaction(db_url) as session:
        assert ledger.settle(session, job_id, charge(200), USAGE) is None

    with transaction(db_url) as session:
        assert balances(session, account_id) == (900, 0)
        assert count(session, CreditTransaction, type="deduction") == 1
        assert count(session, CreditUsageLog) == 1


def test_settle_without_a_hold_returns_none(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=100)
        job = make_job(session, acct)
        assert ledger.settle(session, job.id, charge(10), USAGE) is None
        assert balances(session, acct.id) == (100, 0)


# --- release -----------------------------------------------------------------------------


@pytest.mark.parametrize(("expired", "status"), [(False, "released"), (True, "expired")])
def test_release_returns_the_hold_without_a_transaction(
    db_url: str, expired: bool, status: str
) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)

    with transaction(db_url) as session:
        assert ledger.release(session, job_id, expired=expired) == 300

    with transaction(db_url) as session:
        assert balances(session, account_id) == (1000, 0)
        assert count(session, CreditTransaction, account_id=account_id) == 1  # the funding only
        assert count(session, CreditUsageLog) == 0
        hold = session.scalar(select(CreditReservation).where(CreditReservation.job_id == job_id))
        assert hold is not None
        assert hold.status == status
        assert hold.resolved_at is not None
        # Released twice: nothing more to give back.
        assert ledger.release(session, job_id) == 0
        assert balances(session, account_id) == (1000, 0)


def test_release_after_settle_is_a_no_op(db_url: str) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)
    with transaction(db_url) as session:
        ledger.settle(session, job_id, charge(100), USAGE)

    with transaction(db_url) as session:
        assert ledger.release(session, job_id) == 0

    with transaction(db_url) as session:
        assert balances(session, account_id) == (900, 0)
        hold = session.scalar(select(CreditReservation).where(CreditReservation.job_id == job_id))
        assert hold is not None
        assert hold.status == "settled"


def test_settle_after_release_charges_nothing(db_url: str) -> None:
    account_id, job_id = funded_job(db_url, credits=1000, hold=300)
    with transaction(db_url) as session:
        ledger.release(session, job_id)
    with transaction(db_url) as session:
        assert ledger.settle(session, job_id, charge(100), USAGE) is None
    with transaction(db_url) as session:
        assert balances(session, account_id) == (1000, 0)
        assert count(session, CreditTransaction, type="deduction") == 0


# --- grants ------------------------------------------------------------------------------


def test_grant_posts_a_transaction_with_its_balance(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=500)
        posted = ledger.grant(
            session, acct.id, 250, "bank_transfer", "wire", reference="INV-1", metadata={"by": "t"}
        )
        assert (posted.type, posted.amount, posted.balance_after) == ("bank_transfer", 250, 750)
        assert posted.reference == "INV-1"
        assert posted.metadata_ == {"by": "t"}
        assert balances(session, acct.id) == (750, 0)
    assert_audit_clean(db_url)


def test_grant_with_the_same_reference_twice_is_refused(db_url: str) -> None:
    with transaction(db_url) as session:
        account_id = make_account(session, credits=0).id
        ledger.grant(session, account_id, 100, "bank_transfer", "wire", reference="INV-7")

    with pytest.raises(DuplicateReference) as refused, transaction(db_url) as session:
        ledger.grant(session, account_id, 100, "bank_transfer", "again", reference="INV-7")
    assert refused.value.details == {"reference": "INV-7"}
    assert refused.value.code == "duplicate_reference"

    with transaction(db_url) as session:
        assert balances(session, account_id) == (100, 0)
        # The same reference is fine for another type or another account.
        ledger.grant(session, account_id, 5, "renewal", "period", reference="INV-7")
        other = make_account(session, credits=0)
        ledger.grant(session, other.id, 5, "bank_transfer", "wire", reference="INV-7")
        assert balances(session, account_id) == (105, 0)


def test_grant_with_the_same_reference_twice_in_one_transaction_is_refused(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=0)
        ledger.grant(session, acct.id, 100, "renewal", "month", reference="2025-01")
        with pytest.raises(DuplicateReference):
            ledger.grant(session, acct.id, 100, "renewal", "month", reference="2025-01")
        assert balances(session, acct.id) == (100, 0)


def test_negative_adjustment_cannot_take_credits_below_reserved(db_url: str) -> None:
    account_id, _ = funded_job(db_url, credits=1000, hold=600)

    with pytest.raises(InsufficientCredits) as refused, transaction(db_url) as session:
        ledger.grant(session, account_id, -401, "adjustment", "clawback")
    assert refused.value.details == {"required": 401, "available": 400}

    with transaction(db_url) as session:
        assert balances(session, account_id) == (1000, 600)
        assert count(session, CreditTransaction, account_id=account_id) == 1
        posted = ledger.grant(session, account_id, -400, "adjustment", "clawback")
        assert posted.balance_after == 600
        assert balances(session, account_id) == (600, 600)
    assert_audit_clean(db_url)


def test_negative_adjustment_cannot_take_credits_below_zero(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=50)
        with pytest.raises(InsufficientCredits):
            ledger.grant(session, acct.id, -51, "adjustment", "too much")
        assert balances(session, acct.id) == (50, 0)


@pytest.mark.parametrize(
    ("amount", "type_"),
    [
        (0, "topup"),
        (10, "deduction"),
        (10, "gift"),
        (10, "topup"),  # a payment's grant without its reference
        (10, "renewal"),
        (-5, "registration"),  # only an adjustment takes credits back
    ],
)
def test_grant_rejects_zero_and_non_grant_types(db_url: str, amount: int, type_: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=50)
        with pytest.raises(ValueError):
            ledger.grant(session, acct.id, amount, type_, "nope")
        assert balances(session, acct.id) == (50, 0)


def test_racing_grants_of_one_reference_post_once_and_the_others_are_told_why(
    db_url: str,
) -> None:
    """Twelve threads, one bank reference: one grant; every other one is a
    DuplicateReference (409 in the API), never a raw IntegrityError (500)."""
    with transaction(db_url) as session:
        account_id = make_account(session, credits=0).id
    start = threading.Barrier(12)
    outcomes: list[str] = []

    def pay() -> None:
        start.wait()
        try:
            with transaction(db_url) as session:
                ledger.grant(session, account_id, 100, "bank_transfer", "BT", reference="BT-42")
            outcomes.append("granted")
        except DuplicateReference:
            outcomes.append("duplicate")
        except Exception as exc:  # what must not happen
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=pay) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["duplicate"] * 11 + ["granted"]
    with transaction(db_url) as session:
        assert balances(session, account_id) == (100, 0)
        assert audit(session) == []


def test_list_transactions_pages_newest_first(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, credits=1)
        for i in range(4):
            ledger.grant(session, acct.id, 10 + i, "adjustment", f"t{i}")
        session.flush()
        first = ledger.list_transactions(session, acct.id, cursor=None, limit=3)
        assert [t.amount for t in first.rows] == [13, 12, 11]
        assert first.next_cursor is not None
        rest = ledger.list_transactions(session, acct.id, cursor=first.next_cursor, limit=3)
        assert [t.amount for t in rest.rows] == [10, 1]
        assert rest.next_cursor is None


# --- concurrency: the acceptance tests ------------------------------------------


class TestConcurrency:
    """Real threads and spawned processes racing one account; exactly the funded holds win."""

    HOLDS = 10

    def _fund_exactly(self, url: str, holds: int) -> tuple[str, int]:
        with transaction(url) as session:
            acct = make_account(session, credits=0)
            hold = hold_for(session, acct, request())
            ledger.grant(session, acct.id, holds * hold, "adjustment", "exactly enough")
            return acct.id, hold

    def _check_final(self, url: str, account_id: str, hold: int, succeeded: int) -> None:
        with transaction(url) as session:
            assert balances(session, account_id) == (self.HOLDS * hold, succeeded * hold)
            assert count(session, Job, account_id=account_id) == succeeded
            assert factories.open_holds(session, account_id) == succeeded
            assert audit(session) == []

    def test_50_threads_race_for_10_holds(self, db_url: str) -> None:
        account_id, hold = self._fund_exactly(db_url, self.HOLDS)
        threads_n = 50
        barrier = threading.Barrier(threads_n)
        lock = threading.Lock()
        ok: list[str] = []
        refused: list[InsufficientCredits] = []
        errors: list[BaseException] = []
        lowest_available: list[int] = []
        done = threading.Event()

        def attempt() -> None:
            try:
                barrier.wait(30)
                with transaction(db_url) as session:
                    job = submit(session, account_id, request())
                with lock:
                    ok.append(job.id)
            except InsufficientCredits as exc:
                with lock:
                    refused.append(exc)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        def watch() -> None:
            while not done.is_set():
                with transaction(db_url) as session:
                    credits, reserved = balances(session, account_id)
                lowest_available.append(credits - reserved)
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        workers = [threading.Thread(target=attempt) for _ in range(threads_n)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(120)
        done.set()
        watcher.join(30)

        assert errors == []
        assert len(ok) == self.HOLDS
        assert len(set(ok)) == self.HOLDS
        assert len(refused) == threads_n - self.HOLDS
        assert all(e.details["required"] == hold for e in refused)
        assert all(0 <= e.details["available"] < hold for e in refused)
        assert lowest_available
        assert min(lowest_available) >= 0
        self._check_final(db_url, account_id, hold, succeeded=self.HOLDS)

    def test_concurrent_settles_and_releases_of_one_hold_post_once(self, db_url: str) -> None:
        """Redelivered copies of a task racing each other: the held -> closed gate lets one
        through, whichever step it is, and nothing else changes the balance."""
        account_id, job_id = funded_job(db_url, credits=1000, hold=300)
        threads_n = 12
        barrier = threading.Barrier(threads_n)
        lock = threading.Lock()
        outcomes: list[tuple[str, Any]] = []
        errors: list[BaseException] = []

        def attempt(i: int) -> None:
            try:
                barrier.wait(30)
                with transaction(db_url) as session:
                    if i % 3:
                        outcome: tuple[str, Any] = (
                            "settle",
                            ledger.settle(session, job_id, charge(120), USAGE),
                        )
                    else:
                        outcome = ("release", ledger.release(session, job_id))
                with lock:
                    outcomes.append(outcome)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        workers = [threading.Thread(target=attempt, args=(i,)) for i in range(threads_n)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)

        assert errors == []
        winners = [(step, got) for step, got in outcomes if got not in (None, 0)]
        assert len(outcomes) == threads_n
        assert len(winners) == 1
        with transaction(db_url) as session:
            settled = winners[0][0] == "settle"
            assert balances(session, account_id) == ((880, 0) if settled else (1000, 0))
            assert count(session, CreditTransaction, type="deduction") == int(settled)
            assert count(session, CreditUsageLog) == int(settled)
            assert factories.open_holds(session, account_id) == 0
        if settled:
            _mark_succeeded(db_url, job_id, 120)
        else:
            _mark_failed(db_url, job_id)
        assert_audit_clean(db_url)

    def _run_processes(self, target: Any, args: tuple[Any, ...], processes: int = 4) -> list[Any]:
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(processes)
        results = ctx.Queue()
        children = [
            ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(processes)
        ]
        for child in children:
            child.start()
        try:
            outcomes = [results.get(timeout=180) for _ in children]
        finally:
            for child in children:
                child.join(60)
                if child.is_alive():
                    child.kill()
                    child.join()
        assert [child.exitcode for child in children] == [0] * processes
        return outcomes

    def test_4_processes_race_for_10_holds(self, db_url: str) -> None:
        account_id, hold = self._fund_exactly(db_url, self.HOLDS)
        per_process = 8

        outcomes = self._run_processes(
            factories.submit_in_process, (db_url, account_id, per_process)
        )

        assert [o["errors"] for o in outcomes] == [[]] * 4
        succeeded = sum(len(o["ok"]) for o in outcomes)
        assert succeeded == self.HOLDS
        assert sum(o["insufficient"] for o in outcomes) == 4 * per_process - self.HOLDS
        self._check_final(db_url, account_id, hold, succeeded=self.HOLDS)

    def test_4_processes_reserve_and_settle_on_one_account(self, db_url: str) -> None:
        # The full count is the SQLite acceptance (one file, four writers); PostgreSQL
        # runs the same shape with fewer cycles to keep the suite quick.
        cycles = 300 if db_url.startswith("sqlite") else 60
        usage = (40, 25)  # 65 tokens -> 1 credit on gpt-4o-mini
        with transaction(db_url) as session:
            acct = make_account(session, credits=0)
            account_id = acct.id
            hold = hold_for(session, acct, request())
            funding = 4 * cycles * hold
            ledger.grant(session, acct.id, funding, "adjustment", "enough for every hold")

        outcomes = self._run_processes(
            factories.cycles_in_process, (db_url, account_id, cycles, usage)
        )

        assert [o["errors"] for o in outcomes] == [[]] * 4
        assert sum(o["settled"] for o in outcomes) == 4 * cycles
        with transaction(db_url) as session:
            assert balances(session, account_id) == (funding - 4 * cycles, 0)
            assert count(session, Job, account_id=account_id, status="succeeded") == 4 * cycles
            assert count(session, CreditTransaction, type="deduction") == 4 * cycles
            assert count(session, CreditUsageLog, account_id=account_id) == 4 * cycles
            assert factories.open_holds(session, account_id) == 0
            assert audit(session) == []
