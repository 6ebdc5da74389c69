"""Trial expiry, usage periods (Ahrefs reset) and credit renewal with a frozen clock:
every function takes `now`, so each test walks time forward by passing it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from billing import ledger, lifecycle
from billing.audit import audit
from billing.credits import BankTransfer, confirm_bank_transfer
from billing.errors import InvalidInput
from billing.periods import add_months, next_period_end
from billing.subscriptions import admin_change
from models import (
    Account,
    AccountEvent,
    CreditTransaction,
    PeriodRun,
    Plan,
    Site,
    WebhookDelivery,
    as_utc,
)
from models.db import transaction

WEEK = timedelta(days=7)
WARN = timedelta(days=3)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def make_account(
    plan: str = "starter",
    status: str = "active",
    *,
    period_start: datetime | None = None,
    trial_ends_at: datetime | None = None,
    credits: int = 0,
    webhook_url: str | None = None,
    ahrefs_used: int = 0,
) -> str:
    with transaction() as session:
        account = Account(
            name="lifecycle",
            plan=session.scalar(select(Plan).where(Plan.slug == plan)),
            status=status,
            trial_ends_at=trial_ends_at,
            period_start=period_start,
            period_end=add_months(period_start, 1) if period_start else None,
            usage_ahrefs_queries=ahrefs_used,
            webhook_url=webhook_url,
        )
        session.add(account)
        session.flush()
        if credits:
            ledger.grant(session, account.id, credits, "adjustment", "test funding")
        return account.id


def account(account_id: str) -> Account:
    with transaction() as session:
        found = session.get(Account, account_id)
        assert found is not None
        return found


def events(account_id: str) -> list[tuple[str, dict[str, Any]]]:
    with transaction() as session:
        rows = session.scalars(
            select(AccountEvent).where(AccountEvent.account_id == account_id)
        ).all()
        return [(row.type, row.data) for row in rows]


def renewals(account_id: str) -> list[CreditTransaction]:
    with transaction() as session:
        return list(
            session.scalars(
                select(CreditTransaction).where(
                    CreditTransaction.account_id == account_id,
                    CreditTransaction.type == "renewal",
                )
            )
        )


def audit_clean() -> None:
    with transaction() as session:
        assert audit(session) == []


# --- calendar arithmetic (no database) ---------------------------------------------------


@pytest.mark.parametrize(
    ("start", "ends"),
    [
        (
            "2027-01-31T09:30:00",
            ["2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31", "2027-06-30", "2027-07-31"],
        ),
        ("2028-01-31T00:00:00", ["2028-02-29", "2028-03-31", "2028-04-30"]),
        ("2027-01-30T00:00:00", ["2027-02-28", "2027-03-30", "2027-04-30", "2027-05-30"]),
        ("2027-01-29T00:00:00", ["2027-02-28", "2027-03-29"]),
        ("2027-11-30T00:00:00", ["2027-12-30", "2028-01-30", "2028-02-29", "2028-03-30"]),
        ("2027-03-15T12:00:00", ["2027-04-15", "2027-05-15"]),
    ],
)
def test_periods_are_calendar_months_on_the_anchor_day(start: str, ends: list[str]) -> None:
    period_start = at(start)
    period_end = add_months(period_start, 1)
    seen = []
    for _ in ends:
        seen.append(period_end.date().isoformat())
        assert period_end.time() == period_start.time()
        period_start, period_end = period_end, next_period_end(period_start, period_end)
    assert seen == ends


def test_the_anchor_day_never_drifts_over_years() -> None:
    anchor = at("2027-01-31T00:00:00")
    start, end = anchor, add_months(anchor, 1)
    for months in range(1, 61):
        assert end == add_months(anchor, months)
        start, end = end, next_period_end(start, end)


# --- trials -----------------------------------------------------------------------------


def test_a_trial_is_warned_once_then_suspended_at_its_end(db_url: str) -> None:
    ends = at("2027-03-10T12:00:00")
    trial = make_account(
        "free-trial", "trial", trial_ends_at=ends, credits=2000, webhook_url="https://h.example/w"
    )
    credits_before = account(trial).credits

    with transaction() as session:
        early = lifecycle.expire_trials(session, ends - WEEK, WARN)
    assert (early.accounts, early.warned) == ([], [])

    warnings = []
    for hours in (0, 0, 1):  # the warning goes out once per trial end
        with transaction() as session:
            report = lifecycle.expire_trials(session, ends - timedelta(days=2, hours=hours), WARN)
        warnings.append((report.warned, len(report.deliveries)))
    assert warnings == [([trial], 1), ([], 0), ([], 0)]
    assert account(trial).status == "trial"

    with transaction() as session:
        before_end = lifecycle.expire_trials(session, ends - timedelta(seconds=1), WARN)
    assert before_end.accounts == []
    with transaction() as session:
        expired = lifecycle.expire_trials(session, ends, WARN)
    with transaction() as session:
        again = lifecycle.expire_trials(session, ends + timedelta(hours=1), WARN)

    assert expired.accounts == [trial]
    assert again.accounts == []
    assert account(trial).status == "suspended"
    # A status change, not a credit movement: the balance and the ledger are untouched.
    assert account(trial).credits == credits_before
    assert events(trial) == [
        ("trial_ending", {"trial_ends_at": ends.isoformat(), "days_left": 2}),
        (
            "status_changed",
            {
                "from": "trial",
                "to": "suspended",
                "reason": "trial_expired",
                "trial_ends_at": ends.isoformat(),
            },
        ),
    ]
    with transaction() as session:
        sent = session.execute(
            select(WebhookDelivery.event_type, WebhookDelivery.payload).order_by(
                WebhookDelivery.created_at
            )
        ).all()
    assert [event for event, _ in sent] == ["account.trial_ending", "account.suspended"]
    assert sent[0].payload["data"] == {
        "account_id": trial,
        "trial_ends_at": ends.isoformat(),
        "days_left": 2,
    }
    audit_clean()


def test_only_trials_past_their_end_are_suspended(db_url: str) -> None:
    now = at("2027-05-01T00:00:00")
    past = make_account("free-trial", "trial", trial_ends_at=now - timedelta(days=1))
    future = make_account("free-trial", "trial", trial_ends_at=now + WEEK)
    active = make_account("starter", "active", trial_ends_at=now - timedelta(days=30))

    with transaction() as session:
        report = lifecycle.expire_trials(session, now, WARN)

    assert report.accounts == [past]
    assert [account(a).status for a in (past, future, active)] == ["suspended", "trial", "active"]
    assert report.deliveries == []  # no endpoint, no webhook


# --- usage periods ------------------------------------------------------------------------


def test_the_period_rolls_over_on_its_boundary_and_resets_ahrefs_usage(db_url: str) -> None:
    start = at("2027-01-31T08:00:00")
    acct = make_account("growth", period_start=start, ahrefs_used=42)
    boundary = at("2027-02-28T08:00:00")

    with transaction() as session:
        assert lifecycle.roll_over_periods(session, boundary - timedelta(seconds=1)).accounts == []
    assert account(acct).usage_ahrefs_queries == 42

    with transaction() as session:
        assert lifecycle.roll_over_periods(session, boundary).accounts == [acct]
    with transaction() as session:
        assert lifecycle.roll_over_periods(session, boundary + timedelta(hours=1)).accounts == []

    moved = account(acct)
    assert moved.usage_ahrefs_queries == 0
    assert as_utc(moved.period_start) == boundary  # type: ignore[arg-type]
    assert as_utc(moved.period_end) == at("2027-03-31T08:00:00")  # type: ignore[arg-type]
    assert events(acct) == [
        (
            "period_started",
            {
                "period_start": boundary.isoformat(),
                "period_end": "2027-03-31T08:00:00+00:00",
                "ahrefs_queries_reset_from": 42,
            },
        )
    ]

    with transaction() as session:
        assert lifecycle.roll_over_periods(session, at("2027-03-31T08:00:00")).accounts == [acct]
    assert as_utc(account(acct).period_end) == at("2027-04-30T08:00:00")  # type: ignore[arg-type]


def test_missed_periods_collapse_into_one_move(db_url: str) -> None:
    acct = make_account("starter", period_start=at("2027-01-31T00:00:00"), ahrefs_used=5)

    with transaction() as session:
        lifecycle.roll_over_periods(session, at("2027-05-02T00:00:00"))

    moved = account(acct)
    assert as_utc(moved.period_start) == at("2027-04-30T00:00:00")  # type: ignore[arg-type]
    assert as_utc(moved.period_end) == at("2027-05-31T00:00:00")  # type: ignore[arg-type]
    assert moved.usage_ahrefs_queries == 0
    assert [kind for kind, _ in events(acct)] == ["period_started"]


def _schedule(account_id: str, slug: str, sites: int) -> None:
    """A downgrade to `slug` waiting, and `sites` live sites (however they got there)."""
    with transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(scheduled_plan_id=select(Plan.id).where(Plan.slug == slug).scalar_subquery())
        )
        session.add_all(Site(account_id=account_id, name=f"site {n}") for n in range(sites))


def test_a_scheduled_downgrade_the_account_no_longer_fits_is_not_applied(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    acct = make_account("growth", period_start=at("2027-01-15T00:00:00"))
    _schedule(acct, "free", sites=2)  # Free allows 1 site

    rollover = at("2027-02-15T00:00:00")
    with caplog.at_level(logging.WARNING, logger="billing.lifecycle"), transaction() as session:
        assert lifecycle.roll_over_periods(session, rollover).accounts == [acct]

    kept = account(acct)
    assert (kept.plan.slug if kept.plan else None, kept.scheduled_plan_id) == ("growth", None)
    assert [e for e in events(acct) if e[0] != "period_started"] == [
        (
            "plan_change_skipped",
            {
                "from": "growth",
                "to": "free",
                "reason": "over_limits",
                "over": {"sites": {"used": 2, "limit": 1, "remove": 1}},
            },
        )
    ]
    assert any(acct in record.getMessage() for record in caplog.records)


def test_a_scheduled_downgrade_that_fits_is_applied_at_the_rollover(db_url: str) -> None:
    acct = make_account("growth", period_start=at("2027-01-15T00:00:00"))
    _schedule(acct, "free", sites=1)

    with transaction() as session:
        lifecycle.roll_over_periods(session, at("2027-02-15T00:00:00"))

    moved = account(acct)
    assert (moved.plan.slug if moved.plan else None, moved.scheduled_plan_id) == ("free", None)
    changes = [e for e in events(acct) if e[0] != "period_started"]
    assert changes == [("plan_changed", {"from": "growth", "to": "free"})]


def test_a_downgrade_to_a_free_plan_ends_the_wait_for_a_payment(db_url: str) -> None:
    """An account waiting for a payment (pending_payment) whose downgrade to Free comes
    due: on a free plan there is nothing to pay, so it is active again."""
    acct = make_account("growth", "pending_payment", period_start=at("2027-01-15T00:00:00"))
    _schedule(acct, "free", sites=0)

    with transaction() as session:
        lifecycle.roll_over_periods(session, at("2027-02-15T00:00:00"))

    moved = account(acct)
    assert (moved.plan.slug if moved.plan else None, moved.status) == ("free", "active")
    assert (
        "status_changed",
        {"from": "pending_payment", "to": "active", "reason": "free_plan"},
    ) in (events(acct))


# --- renewal ------------------------------------------------------------------------------


def test_renewal_grants_the_plans_credits_once_per_period_and_balances_roll_over(
    db_url: str,
) -> None:
    start = at("2027-01-31T00:00:00")
    acct = make_account("starter", period_start=start, credits=1234)

    with transaction() as session:
        assert lifecycle.renew_credits(session, start + WEEK).accounts == []  # first period
    second = at("2027-02-28T00:00:00")
    for hours in (0, 1, 24):
        with transaction() as session:
            lifecycle.renew_credits(session, second + timedelta(hours=hours))

    granted = renewals(acct)
    assert [(t.amount, t.reference) for t in granted] == [(10_000, f"renewal:{second.isoformat()}")]
    assert account(acct).credits == 1234 + 10_000  # unused credits are kept

    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-03-31T00:00:01"))
    assert len(renewals(acct)) == 2
    assert account(acct).credits == 1234 + 20_000
    audit_clean()


def test_renewal_past_two_billion_credits_and_one_failure_stops_no_one(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A plan of 10^9 credits a month rolls a balance past 2^31 (PostgreSQL's int4 made
    the grant fail, and with it every account's renewal); and should one account's grant
    fail anyway, the others are still renewed and it is tried again next run."""
    with transaction() as session:
        session.add(Plan(slug="unlimited", name="Unlimited", price=Decimal("999.00"),
                         included_credits=10**9))  # fmt: skip
    start = at("2027-01-31T00:00:00")
    big = make_account("unlimited", period_start=start, credits=1_200_000_000)
    starter = make_account("starter", period_start=start)
    failing = make_account("starter", period_start=start)
    grant = ledger.grant

    def refuse_one(session: Any, account_id: str, *args: Any, **kwargs: Any) -> Any:
        if account_id == failing:
            raise IntegrityError("INSERT", {}, Exception("refused"))
        return grant(session, account_id, *args, **kwargs)

    monkeypatch.setattr(ledger, "grant", refuse_one)
    with caplog.at_level(logging.ERROR, logger="billing.lifecycle"), transaction() as session:
        renewed = lifecycle.renew_credits(session, at("2027-02-28T00:00:00"))

    assert sorted(renewed.accounts) == sorted([big, starter])
    assert account(big).credits == 2_200_000_000
    assert account(starter).credits == 10_000
    assert renewals(failing) == []
    assert any(failing in record.getMessage() for record in caplog.records)
    monkeypatch.setattr(ledger, "grant", grant)
    with transaction() as session:
        assert lifecycle.renew_credits(session, at("2027-02-28T01:00:00")).accounts == [failing]
    assert account(failing).credits == 10_000
    audit_clean()


@pytest.mark.parametrize(
    ("plan", "status", "renewed"),
    [
        ("starter", "active", True),
        ("scale", "active", True),
        ("enterprise", "active", True),  # internal: custom price, still monthly credits
        ("free", "active", False),
        ("free-trial", "trial", False),
        ("starter", "trial", False),
        ("starter", "suspended", False),
        ("starter", "pending_payment", False),
        ("starter", "cancelled", False),
    ],
)
def test_renewal_is_for_active_paid_accounts(
    db_url: str, plan: str, status: str, renewed: bool
) -> None:
    acct = make_account(plan, status, period_start=at("2027-06-15T00:00:00"))

    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-07-15T00:00:00"))

    assert len(renewals(acct)) == (1 if renewed else 0)
    audit_clean()


def test_a_period_opened_by_a_bank_transfer_is_not_renewed_on_top(db_url: str) -> None:
    """The transfer granted this period's credits; renewal resumes at the next period."""
    paid_at = at("2027-08-20T10:00:00")
    acct = make_account("growth", period_start=paid_at)
    with transaction() as session:
        ledger.grant(session, acct, 40_000, "bank_transfer", "transfer", reference="BT-1")

    with transaction() as session:
        lifecycle.renew_credits(session, paid_at + WEEK)
    assert renewals(acct) == []

    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-09-20T10:00:00"))
    assert [t.amount for t in renewals(acct)] == [40_000]
    audit_clean()


def test_a_period_claim_is_once_only(db_url: str) -> None:
    acct = make_account()
    with transaction() as session:
        assert lifecycle.claim_period(session, "renewal", acct, "2027-01-01")
        assert not lifecycle.claim_period(session, "renewal", acct, "2027-01-01")
        assert lifecycle.claim_period(session, "renewal", acct, "2027-02-01")
    with transaction() as session:
        assert not lifecycle.claim_period(session, "renewal", acct, "2027-02-01")
        assert session.scalar(select(func.count()).select_from(PeriodRun)) == 2


# --- bank transfers: prepaid months ------------------------------------------------------


def pay(account_id: str, reference: str, months: int, when: datetime) -> CreditTransaction:
    transfer = BankTransfer(
        payment_reference=reference, amount=Decimal("149.00") * months, payer_name="Jo Doe",
        period_months=months,
    )  # fmt: skip
    with transaction() as session:
        return confirm_bank_transfer(session, account_id, transfer, when)


def credited(account_id: str) -> list[tuple[str, int]]:
    """Every grant after the test funding, oldest first: (type, amount)."""
    with transaction() as session:
        rows = session.execute(
            select(CreditTransaction.type, CreditTransaction.amount)
            .where(CreditTransaction.account_id == account_id)
            .order_by(CreditTransaction.id)
        )
        return [(type_, amount) for type_, amount in rows]


def test_a_transfer_for_three_months_grants_three_months_then_asks_for_payment(
    db_url: str,
) -> None:
    acct = make_account(
        "growth", "pending_payment", period_start=at("2027-01-10T00:00:00"), ahrefs_used=40,
        webhook_url="https://hooks.example.com/aijobs",
    )  # fmt: skip
    paid_at = at("2027-01-31T12:00:00")

    txn = pay(acct, "BT-3M", 3, paid_at)

    assert (txn.type, txn.amount, txn.metadata_["period_months"]) == ("bank_transfer", 120_000, 3)
    paid = account(acct)
    assert (paid.status, paid.credits, paid.usage_ahrefs_queries) == ("active", 120_000, 0)
    assert as_utc(paid.paid_until) == at("2027-04-30T12:00:00")
    assert (as_utc(paid.period_start), as_utc(paid.period_end)) == (
        paid_at, at("2027-02-28T12:00:00"),
    )  # fmt: skip

    for month_start in ("2027-02-28T12:00:00", "2027-03-31T12:00:00"):
        with transaction() as session:
            report = lifecycle.renew_credits(session, at(month_start))
        assert report.accounts == []
        assert account(acct).status == "active"
    assert credited(acct) == [("bank_transfer", 120_000)]

    with transaction() as session:
        report = lifecycle.renew_credits(session, at("2027-04-30T12:00:00"))
    assert report.accounts == []
    due = account(acct)
    assert (due.status, due.credits, as_utc(due.period_start)) == (
        "pending_payment", 120_000, at("2027-04-30T12:00:00"),
    )  # fmt: skip
    assert events(acct)[-1] == (
        "status_changed",
        {"from": "active", "to": "pending_payment", "reason": "prepaid_period_ended",
         "paid_until": "2027-04-30T12:00:00+00:00"},
    )  # fmt: skip
    with transaction() as session:
        sent = session.execute(
            select(WebhookDelivery.event_type, WebhookDelivery.payload).where(
                WebhookDelivery.account_id == acct
            )
        ).all()
    assert [event for event, _ in sent] == ["account.payment_due"]
    assert sent[0][1]["data"]["paid_until"] == "2027-04-30T12:00:00+00:00"

    # Still pending a month later: no renewal, no second status change.
    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-05-31T12:00:00"))
    assert credited(acct) == [("bank_transfer", 120_000)]
    # The transfer's activation and the prepaid end; the later rollover moved nothing.
    moves = [data["reason"] for kind, data in events(acct) if kind == "status_changed"]
    assert moves == ["bank_transfer", "prepaid_period_ended"]
    audit_clean()


def test_the_next_transfer_reactivates_and_renewal_follows_the_paid_months(db_url: str) -> None:
    acct = make_account("growth", "pending_payment", period_start=at("2027-01-10T00:00:00"))
    pay(acct, "BT-1", 1, at("2027-01-10T00:00:00"))
    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-02-10T00:00:00"))
    assert account(acct).status == "pending_payment"

    pay(acct, "BT-2", 2, at("2027-02-12T09:00:00"))
    assert account(acct).status == "active"
    for month_start in ("2027-03-12T09:00:00", "2027-04-12T09:00:00", "2027-05-12T09:00:00"):
        with transaction() as session:
            lifecycle.renew_credits(session, at(month_start))

    # 1 + 2 months paid, 3 months credited; asked for payment after each paid stretch.
    assert credited(acct) == [("bank_transfer", 40_000), ("bank_transfer", 80_000)]
    assert account(acct).status == "pending_payment"
    audit_clean()


def test_a_transfer_while_prepaid_extends_paid_until_and_keeps_the_period(db_url: str) -> None:
    acct = make_account("growth", "trial", period_start=at("2027-03-01T00:00:00"))
    pay(acct, "BT-A", 1, at("2027-03-05T00:00:00"))
    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-03-20T00:00:00"))  # mid-period: nothing

    pay(acct, "BT-B", 2, at("2027-03-20T00:00:00"))

    extended = account(acct)
    assert as_utc(extended.paid_until) == at("2027-06-05T00:00:00")
    assert as_utc(extended.period_start) == at("2027-03-05T00:00:00")
    for month_start in ("2027-04-05T00:00:00", "2027-05-05T00:00:00"):
        with transaction() as session:
            lifecycle.renew_credits(session, at(month_start))
        assert account(acct).status == "active"
    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-06-05T00:00:00"))
    assert account(acct).status == "pending_payment"
    assert credited(acct) == [("bank_transfer", 40_000), ("bank_transfer", 80_000)]
    audit_clean()


def test_an_account_made_active_again_by_an_admin_renews_as_before(db_url: str) -> None:
    acct = make_account("growth", "pending_payment", period_start=at("2027-01-10T00:00:00"))
    pay(acct, "BT-1", 1, at("2027-01-10T00:00:00"))
    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-02-10T00:00:00"))
        session.execute(update(Account).where(Account.id == acct).values(status="active"))
    with transaction() as session:
        lifecycle.renew_credits(session, at("2027-03-10T00:00:00"))
    assert account(acct).status == "active"
    assert credited(acct) == [("bank_transfer", 40_000), ("renewal", 40_000)]
    audit_clean()


@pytest.mark.parametrize(
    ("credits", "message"), [(None, "has no plan"), (0, "includes no credits")]
)
def test_a_transfer_needs_a_plan_with_credits(
    db_url: str, credits: int | None, message: str
) -> None:
    acct = make_account("growth", "pending_payment")
    with transaction() as session:
        found = session.get(Account, acct)
        assert found is not None
        found.plan = None if credits is None else Plan(slug="seats", name="Seats only")
    with pytest.raises(InvalidInput, match=message):
        pay(acct, "BT-X", 1, at("2027-01-10T00:00:00"))
    assert credited(acct) == []


@pytest.mark.parametrize("months", [1, 3])
def test_suspending_and_reactivating_a_prepaid_account_grants_nothing_more(
    db_url: str, months: int
) -> None:
    """An admin's suspend and reactivate (say, while a chargeback is looked into) inside
    the prepaid time: the payment already credited every month it paid for."""
    acct = make_account("growth", "pending_payment", period_start=at("2027-01-10T00:00:00"))
    pay(acct, "BT-1", months, at("2027-01-10T00:00:00"))
    paid = [("bank_transfer", 40_000 * months)]
    last_prepaid_month = add_months(at("2027-01-10T00:00:00"), months - 1)
    for when in sorted({at("2027-01-20T00:00:00"), last_prepaid_month + WEEK}):
        with transaction() as session:
            lifecycle.renew_credits(session, when)  # rolls the period over when one ended
        for status in ("suspended", "active"):
            with transaction() as session:
                admin_change(session, acct, status, None, when)
        assert credited(acct) == paid
        assert account(acct).status == "active"

    # Once the prepaid time is over and paid again, renewal and activation work as before.
    end = add_months(at("2027-01-10T00:00:00"), months)
    with transaction() as session:
        lifecycle.renew_credits(session, end)
    assert account(acct).status == "pending_payment"
    with transaction() as session:
        admin_change(session, acct, "active", None, end)
        admin_change(session, acct, "suspended", None, end)
        admin_change(session, acct, "active", None, end)
    assert credited(acct) == [*paid, ("renewal", 40_000)]
    audit_clean()


# SQLite's BEGIN IMMEDIATE runs the payment and the rollover one after the other: the
# interleavings below exist on PostgreSQL only.
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_a_payment_committed_while_the_rollover_runs_is_not_asked_for_again(
    db_url: str,
) -> None:
    """The rollover reads the due accounts, then moves them one by one; a payment that
    extends the prepaid time commits in between. The rollover must judge the prepaid
    end the payment left, not the one it read: else the account that just paid is
    `pending_payment`, and no later rollover moves it back."""
    acct = make_account("growth", "pending_payment", period_start=at("2027-01-10T00:00:00"))
    pay(acct, "BT-1", 1, at("2027-01-10T00:00:00"))  # paid until 2027-02-10
    boundary = at("2027-02-10T00:00:00")

    with transaction() as rollover:
        due = rollover.scalars(
            select(Account).where(Account.id == acct, Account.period_end <= boundary)
        ).one()
        pay(acct, "BT-2", 1, at("2027-02-09T23:00:00"))  # extends to 2027-03-10
        lifecycle.roll_over_account(rollover, due, boundary, lifecycle.RunReport())

    paid = account(acct)
    assert (paid.status, as_utc(paid.paid_until)) == ("active", at("2027-03-10T00:00:00"))
    assert [d["reason"] for k, d in events(acct) if k == "status_changed"] == ["bank_transfer"]
    assert credited(acct) == [("bank_transfer", 40_000), ("bank_transfer", 40_000)]
    audit_clean()


@ON_POSTGRESQL
def test_a_payment_that_read_the_account_before_the_rollover_asked_for_payment_activates_it(
    db_url: str,
) -> None:
    """The payment read the account (active, prepaid for one more hour), then the
    rollover committed `pending_payment`. Extending the prepaid time from that read left
    the paid account `pending_payment`: the payment decides on the account as it is once
    it holds the row."""
    acct = make_account("growth", "pending_payment", period_start=at("2027-01-10T00:00:00"))
    pay(acct, "BT-1", 1, at("2027-01-10T00:00:00"))  # paid until 2027-02-10
    paid_at = at("2027-02-09T23:00:00")
    transfer = BankTransfer(payment_reference="BT-2", amount=Decimal("149.00"), payer_name="Jo Doe")

    with transaction() as payment:
        read = payment.get(Account, acct)  # held: the session keeps this read
        assert read is not None
        assert read.status == "active"
        with transaction() as session:
            lifecycle.renew_credits(session, at("2027-02-10T00:00:00"))
        assert account(acct).status == "pending_payment"
        confirm_bank_transfer(payment, acct, transfer, paid_at)

    paid = account(acct)
    assert paid.status == "active"
    assert as_utc(paid.paid_until) > at("2027-02-10T00:00:00")
    assert credited(acct) == [("bank_transfer", 40_000), ("bank_transfer", 40_000)]
    audit_clean()


# --- an admin activation once the prepaid time has run out -------------------------------

JAN_10 = at("2027-01-10T00:00:00")
PAID_END = at("2027-02-10T00:00:00")  # one month paid on Jan 10


def suspended_after_a_month_paid() -> str:
    acct = make_account(
        "growth", "pending_payment", period_start=JAN_10, webhook_url="https://hooks.example.com/a"
    )
    pay(acct, "BT-1", 1, JAN_10)
    with transaction() as session:
        admin_change(session, acct, "suspended", None, at("2027-01-20T00:00:00"))
    return acct


@pytest.mark.parametrize("rolled_over", [False, True], ids=["before-rollover", "after-rollover"])
def test_reactivating_a_suspension_past_the_prepaid_end_asks_for_payment_and_grants_nothing(
    db_url: str, rolled_over: bool
) -> None:
    """Suspended while prepaid, reactivated once the prepaid time is over: the new
    period is not paid for. The account ends as the rollover leaves an unsuspended one
    (`pending_payment`, asked to pay), whether or not the hourly rollover ran first."""
    acct = suspended_after_a_month_paid()
    now = PAID_END + timedelta(minutes=30)
    if rolled_over:
        with transaction() as session:
            lifecycle.renew_credits(session, PAID_END)
        assert account(acct).status == "suspended"

    with transaction() as session:
        admin_change(session, acct, "active", None, now)
    with transaction() as session:
        lifecycle.renew_credits(session, now + timedelta(minutes=30))

    after = account(acct)
    assert (after.status, as_utc(after.period_start)) == ("pending_payment", PAID_END)
    assert credited(acct) == [("bank_transfer", 40_000)]
    moves = [(d["to"], d["reason"]) for k, d in events(acct) if k == "status_changed"]
    assert moves[-2:] == [("active", "admin"), ("pending_payment", "prepaid_period_ended")]
    with transaction() as session:
        sent = session.scalars(
            select(WebhookDelivery.event_type).where(WebhookDelivery.account_id == acct)
        ).all()
    assert sent == ["account.payment_due"]

    # An admin who sets the pending account active again puts it on monthly renewal
    # (README); paying again is credited as usual.
    with transaction() as session:
        admin_change(session, acct, "active", None, now + timedelta(hours=1))
    pay(acct, "BT-2", 1, now + timedelta(hours=2))
    assert account(acct).status == "active"
    assert credited(acct) == [
        ("bank_transfer", 40_000), ("renewal", 40_000), ("bank_transfer", 40_000),
    ]  # fmt: skip
    audit_clean()


@pytest.mark.parametrize(
    ("plan", "status", "granted"),
    [("growth", "active", [("renewal", 40_000)]), ("free-trial", "trial", [])],
    ids=["paid", "trial"],
)
@pytest.mark.parametrize("rolled_over", [False, True], ids=["before-rollover", "after-rollover"])
def test_reactivating_a_suspension_past_the_period_end_without_prepaid_time(
    db_url: str, plan: str, status: str, granted: list[tuple[str, int]], rolled_over: bool
) -> None:
    """No `paid_until`: a paid plan on monthly renewal is credited the period of now
    once and stays active; a trial's plan is not a paid one, so nothing is granted."""
    acct = make_account(plan, status, period_start=JAN_10, trial_ends_at=PAID_END + WEEK)
    with transaction() as session:
        admin_change(session, acct, "suspended", None, at("2027-01-20T00:00:00"))
    now = PAID_END + timedelta(minutes=30)
    if rolled_over:
        with transaction() as session:
            lifecycle.renew_credits(session, PAID_END)

    with transaction() as session:
        admin_change(session, acct, "active", None, now)
    with transaction() as session:
        lifecycle.renew_credits(session, now + timedelta(minutes=30))

    after = account(acct)
    assert (after.status, as_utc(after.period_start)) == ("active", PAID_END)
    assert credited(acct) == granted
    assert [t.metadata_["period_start"] for t in renewals(acct)] == [
        PAID_END.isoformat() for _ in granted
    ]
    audit_clean()
