"""The audit names every ledger invariant violation. Each test breaks one on purpose with
raw SQL (only what the database constraints allow) and checks the message names it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import ledger
from billing.audit import audit
from billing.pricing import Usage
from billing.runs import complete_job, fail_job, start_job
from models import Account
from models.db import get_engine, snapshot, transaction
from tests.factories import balances, make_account, make_job, request, submit

IMAGES = {"operation": "image_generation", "input": {"prompt": "a heron", "count": 4}}


@dataclass(frozen=True)
class Ledger:
    account: str
    settled: str  # succeeded, charged 2 of its 4
    released: str  # failed, hold released
    held: str  # queued, hold open
    bystander: str  # another, clean account


@pytest.fixture
def books(db_url: str) -> Ledger:
    with transaction(db_url) as session:
        account = make_account(session, credits=1000).id
        bystander = make_account(session, credits=50).id
        settled, released, held = (submit(session, account, request(IMAGES)).id for _ in "abc")
        submit(session, bystander, request(IMAGES))
    with transaction(db_url) as session:
        run = start_job(session, settled)
        assert run is not None
        assert complete_job(session, run, Usage(images=2), {}, [])
        assert fail_job(session, released, "provider_unavailable", "down")
    with transaction(db_url) as session:
        assert balances(session, account) == (998, 4)
        assert audit(session) == []
    return Ledger(account, settled, released, held, bystander)


def broken(url: str, *statements: str, **params: str) -> list[str]:
    with transaction(url) as session:
        for statement in statements:
            session.execute(text(statement), params)
    with transaction(url) as session:
        return audit(session)


def only_about(violations: list[str], subject: str) -> None:
    assert violations, "the audit found nothing"
    assert all(subject in v for v in violations), violations


def test_a_clean_ledger_has_no_violations(db_url: str, books: Ledger) -> None:
    with transaction(db_url) as session:
        assert audit(session) == []


def test_an_empty_database_has_no_violations(db_url: str) -> None:
    with transaction(db_url) as session:
        assert audit(session) == []


def test_credits_drifting_from_the_transactions(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url, "UPDATE accounts SET credits = credits + 7 WHERE id = :a", a=books.account
    )
    assert f"account {books.account}: credits 1005 != sum of transactions 998" in violations
    only_about(violations, books.account)


def test_reserved_drifting_from_the_open_holds(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url,
        "UPDATE accounts SET reserved_credits = reserved_credits + 3 WHERE id = :a",
        a=books.account,
    )
    assert violations == [f"account {books.account}: reserved_credits 7 != sum of open holds 4"]


def test_a_hold_closed_behind_the_accounts_back(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url,
        "UPDATE credit_reservations SET status = 'released' WHERE job_id = :j",
        j=books.held,
    )
    assert f"account {books.account}: reserved_credits 4 != sum of open holds 0" in violations


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE accounts SET reserved_credits = credits + 1 WHERE id = :a",
        "UPDATE accounts SET reserved_credits = -1 WHERE id = :a",
        "UPDATE accounts SET credits = 0 WHERE id = :a",
    ],
)
def test_the_database_refuses_reserved_outside_zero_to_credits(
    db_url: str, books: Ledger, statement: str
) -> None:
    with pytest.raises(IntegrityError), transaction(db_url) as session:
        session.execute(text(statement), {"a": books.account})
    with transaction(db_url) as session:
        assert audit(session) == []


def test_a_broken_balance_chain(db_url: str, books: Ledger) -> None:
    with transaction(db_url) as session:
        first = session.execute(
            text("SELECT MIN(id) FROM credit_transactions WHERE account_id = :a"),
            {"a": books.account},
        ).scalar_one()
    violations = broken(
        db_url,
        "UPDATE credit_transactions SET balance_after = balance_after + 1 WHERE id = :t",
        t=str(first),
    )
    assert (
        f"transaction {first} (account {books.account}): balance_after 1001 "
        "!= previous 0 + amount 1000"
    ) in violations
    only_about(violations, f"(account {books.account})")


def test_a_final_job_with_an_open_hold(db_url: str, books: Ledger) -> None:
    violations = broken(db_url, "UPDATE jobs SET status = 'failed' WHERE id = :j", j=books.held)
    assert f"job {books.held}: failed but its hold is still open" in violations
    only_about(violations, books.held)


def test_a_succeeded_job_whose_hold_was_released(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url, "UPDATE jobs SET status = 'succeeded' WHERE id = :j", j=books.released
    )
    assert violations == [f"job {books.released}: status succeeded with hold released"]


def test_a_settled_job_without_its_usage_log(db_url: str, books: Ledger) -> None:
    violations = broken(db_url, "DELETE FROM credit_usage_logs WHERE job_id = :j", j=books.settled)
    assert violations == [
        f"job {books.settled}: settled with 1 deductions and 0 usage logs (want 1 and 1)"
    ]


def test_a_settled_job_whose_deduction_is_gone(db_url: str, books: Ledger) -> None:
    """No deduction row: the job's count and sum are NULL in the audit's join, read as 0
    (and the missing deduction as 0, not -0)."""
    violations = broken(
        db_url,
        "DELETE FROM credit_transactions WHERE job_id = :j AND type = 'deduction'",
        j=books.settled,
    )
    assert f"job {books.settled}: settled with 0 deductions and 1 usage logs (want 1 and 1)" in (
        violations
    )
    assert f"job {books.settled}: credits_charged 2 != deduction 0" in violations
    assert f"account {books.account}: credits 998 != sum of transactions 1000" in violations


def test_an_account_without_any_transaction_or_hold(db_url: str, books: Ledger) -> None:
    """No transaction, hold or run: every per-account sum is NULL, read as 0."""
    with transaction(db_url) as session:
        empty = make_account(session, credits=0).id
    assert broken(db_url) == []
    violations = broken(
        db_url,
        "UPDATE accounts SET credits = 5, reserved_credits = 2 WHERE id = :a",
        a=empty,
    )
    assert violations == [
        f"account {empty}: credits 5 != sum of transactions 0",
        f"account {empty}: reserved_credits 2 != sum of open holds 0",
    ]


def test_a_usage_log_moved_to_another_job(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url,
        "UPDATE credit_usage_logs SET job_id = :r WHERE job_id = :s",
        r=books.released,
        s=books.settled,
    )
    assert sorted(violations) == sorted([
        f"job {books.settled}: settled with 1 deductions and 0 usage logs (want 1 and 1)",
        f"job {books.released}: charged although its hold is released",
    ])  # fmt: skip


def test_a_usage_log_whose_automation_is_not_its_jobs(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url, "UPDATE jobs SET automation_id = 'auto_1' WHERE id = :j", j=books.settled
    )
    assert violations == [f"job {books.settled}: usage log automation None != the job's 'auto_1'"]


def test_a_settled_job_with_two_deductions(db_url: str, books: Ledger) -> None:
    """The partial unique index forbids this; drop it inside a transaction we roll back."""
    with get_engine(db_url).connect() as connection:
        outer = connection.begin()
        try:
            connection.execute(text("DROP INDEX uq_credit_transactions_deduction_job"))
            connection.execute(
                text(
                    "INSERT INTO credit_transactions "
                    "(account_id, type, amount, balance_after, description, job_id, metadata, "
                    "created_at) VALUES (:a, 'deduction', -1, 997, 'again', :j, '{}', "
                    "CURRENT_TIMESTAMP)"
                ),
                {"a": books.account, "j": books.settled},
            )
            violations = audit(Session(bind=connection))
        finally:
            outer.rollback()
    assert f"job {books.settled}: settled with 2 deductions and 1 usage logs (want 1 and 1)" in (
        violations
    )
    assert f"job {books.settled}: credits_charged 2 != deduction 3" in violations
    with transaction(db_url) as session:  # the index is back and the books are clean
        assert audit(session) == []
        with pytest.raises(IntegrityError), session.begin_nested():
            session.execute(
                text(
                    "INSERT INTO credit_transactions (account_id, type, amount, balance_after, "
                    "description, job_id, metadata, created_at) VALUES (:a, 'deduction', -1, "
                    "997, 'again', :j, '{}', CURRENT_TIMESTAMP)"
                ),
                {"a": books.account, "j": books.settled},
            )


def test_credits_charged_disagreeing_with_the_deduction(db_url: str, books: Ledger) -> None:
    violations = broken(
        db_url, "UPDATE jobs SET credits_charged = 5 WHERE id = :j", j=books.settled
    )
    assert violations == [f"job {books.settled}: credits_charged 5 != deduction 2"]


def test_a_job_without_a_hold(db_url: str, books: Ledger) -> None:
    with transaction(db_url) as session:
        job_id = make_job(session, session.get(Account, books.bystander)).id
        violations = audit(session)
    assert violations == [f"job {job_id}: has no credit hold"]


@pytest.fixture
def purchases_made(db_url: str, books: Ledger) -> tuple[str, str]:
    """A paid top-up (granted through `purchases.confirm`) and a pending one."""
    from billing import purchases
    from models import utcnow

    with transaction(db_url) as session:
        account = session.get(Account, books.account)
        assert account is not None
        paid = purchases.create_topup(session, account, 1000).id
        pending = purchases.create_topup(session, account, 2000).id
        purchases.confirm(session, paid, "manual", "BANK-1", utcnow())
    with transaction(db_url) as session:
        assert audit(session) == []
    return paid, pending


def test_a_paid_purchase_without_its_grant(db_url: str, purchases_made: tuple[str, str]) -> None:
    paid, _ = purchases_made
    violations = broken(db_url, "UPDATE purchases SET transaction_id = NULL WHERE id = :p", p=paid)
    assert any(v.startswith(f"purchase {paid}: paid, but its grant is None") for v in violations)


def test_a_pending_purchase_with_credits_granted(
    db_url: str, books: Ledger, purchases_made: tuple[str, str]
) -> None:
    _, pending = purchases_made
    with transaction(db_url) as session:
        ledger.grant(session, books.account, 2000, "topup", "minted", reference=pending)
    with transaction(db_url) as session:
        violations = audit(session)
    assert violations[0] == f"purchase {pending}: pending, but credits were granted"
    assert len(violations) == 2
    assert "top-up of 2000 with no paid purchase of those credits" in violations[1]


def test_the_audit_sees_one_moment_while_grants_commit_between_its_reads(
    db_url: str, books: Ledger
) -> None:
    """On a live database the audit's statements run while grants commit: read at
    READ COMMITTED, the balances could be newer than the sum of transactions read a
    moment before, a violation that is not there (`python -m ops audit` at 3 a.m.)."""
    engine = get_engine(db_url)
    granted: list[int] = []

    def grant_between(*_args: object) -> None:
        if granted:
            return
        granted.append(1)
        with transaction(db_url) as session:  # another connection, committed now
            ledger.grant(session, books.account, 5, "adjustment", "during the audit")

    with snapshot(db_url) as session:
        event.listen(engine, "after_cursor_execute", grant_between)
        try:
            violations = audit(session)
        finally:
            event.remove(engine, "after_cursor_execute", grant_between)

    assert granted == [1]
    assert violations == []
    with snapshot(db_url) as session:
        assert audit(session) == []


# --- money that moved consistently, but wrongly ------------------------------------------
# Each corruption keeps the account's sums and balance chain right, so only the links
# between a job, its hold, its deduction and its usage log (or a transaction's shape) show.

MOVED = {
    "a charge above its hold (4), everywhere consistent": (
        [
            "UPDATE credit_transactions SET amount = -6, balance_after = balance_after - 4"
            " WHERE job_id = :j AND type = 'deduction'",
            "UPDATE credit_transactions SET balance_after = balance_after - 4"
            " WHERE account_id = :a AND id > (SELECT id FROM credit_transactions"
            " WHERE job_id = :j AND type = 'deduction')",
            "UPDATE accounts SET credits = credits - 4 WHERE id = :a",
            "UPDATE jobs SET credits_charged = 6 WHERE id = :j",
            "UPDATE credit_usage_logs SET credits = 6 WHERE job_id = :j",
        ],
        "deduction -6 against a hold of 4",
    ),
    "the usage log says another amount": (
        ["UPDATE credit_usage_logs SET credits = credits + 40 WHERE job_id = :j"],
        "usage log of 42 credits, deduction -2",
    ),
    "the usage log on another account": (
        ["UPDATE credit_usage_logs SET account_id = :b WHERE job_id = :j"],
        "usage log on",
    ),
    "an open hold moved to another account": (
        [
            "UPDATE credit_reservations SET account_id = :b WHERE job_id = :h",
            "UPDATE accounts SET reserved_credits = reserved_credits - 4 WHERE id = :a",
            "UPDATE accounts SET reserved_credits = reserved_credits + 4 WHERE id = :b",
        ],
        "hold on",
    ),
}


@pytest.mark.parametrize("case", MOVED)
def test_money_moved_consistently_but_wrongly_is_found(
    db_url: str, books: Ledger, case: str
) -> None:
    statements, expected = MOVED[case]
    violations = broken(
        db_url, *statements, a=books.account, b=books.bystander, j=books.settled, h=books.held
    )
    assert any(expected in v for v in violations), violations


@pytest.mark.parametrize(
    ("type_", "amount", "reference", "expected"),
    [
        ("topup", 500, None, "topup without its reference"),
        ("topup", 500, "pur_made_up", "top-up of 500 with no paid purchase"),
        ("renewal", 500, None, "renewal without its reference"),
        ("registration", -5, None, "registration of -5 credits"),
        ("deduction", -2, None, "a deduction without a job"),
    ],
)
def test_a_transaction_of_the_wrong_shape_is_found(
    db_url: str, books: Ledger, type_: str, amount: int, reference: str | None, expected: str
) -> None:
    """Posted around `ledger.grant` (which refuses them all): the chain and sums agree,
    the transaction's kind does not."""
    with transaction(db_url) as session:
        balance = session.execute(
            text("UPDATE accounts SET credits = credits + :n WHERE id = :a RETURNING credits"),
            {"a": books.account, "n": amount},
        ).scalar_one()
        session.execute(
            text(
                "INSERT INTO credit_transactions (account_id, type, amount, balance_after,"
                " description, reference, metadata, created_at) VALUES (:a, :t, :n, :b,"
                " 'posted by hand', :r, '{}', CURRENT_TIMESTAMP)"
            ),
            {"a": books.account, "t": type_, "n": amount, "b": balance, "r": reference},
        )
    with transaction(db_url) as session:
        violations = audit(session)
    assert any(expected in v for v in violations), violations


def test_a_balance_below_zero_on_the_way_is_found(db_url: str, books: Ledger) -> None:
    """-10 then +10 ends where it started: the sums agree, the history went below 0."""
    with transaction(db_url) as session:
        session.execute(
            text(
                "INSERT INTO credit_transactions (account_id, type, amount, balance_after,"
                " description, metadata, created_at) VALUES (:a, 'adjustment', -1008, -10,"
                " 'out', '{}', CURRENT_TIMESTAMP), (:a, 'adjustment', 1008, 998, 'back',"
                " '{}', CURRENT_TIMESTAMP)"
            ),
            {"a": books.account},
        )
        violations = audit(session)
    assert any("balance after it -10 < 0" in v for v in violations), violations
