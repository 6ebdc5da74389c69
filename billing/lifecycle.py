"""Account lifecycle over time: trial expiry, the monthly usage period (Ahrefs reset)
and the monthly credit renewal. Celery beat runs these (`tasks/periodic.py`); so can
`python -m ops periodic ... --now` for any instant.

Every effect is once-only per (task, account, period): inserting a `PeriodRun` row is
the claim, and its unique key turns a second run of the same period, whether from the
same beat, a second beat or a person at the CLI, into a no-op. Each function takes an
explicit `now`, so tests freeze the clock by passing it.

A downgrade the owner asked for (billing/subscriptions.py) takes effect at the rollover
that ends the period it was asked in.

Renewal policy (README "Scheduled jobs"): accounts with status `active` on a paid
plan (price > 0, or an internal plan such as enterprise) receive the plan's included
credits once for each usage period that began by rolling over. Unused credits roll
over: the balance is what the account has right now, and a renewal adds to it. A
period opened by a bank transfer, or starting before the `paid_until` it prepaid, is
not renewed on top (the transfer granted those months); the rollover that reaches
`paid_until` moves the account to `pending_payment`. Periods missed while nothing ran
are not back-filled: the account gets the current one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from billing import ledger
from billing.accounts import has_event, move_status
from billing.limits import excess
from billing.periods import next_period_end
from billing.plans import is_renewable
from billing.webhooks import queue_account_event
from models import Account, AccountEvent, PeriodRun, Plan, as_utc

TRIAL_WARNING = "trial_warning"
TRIAL_EXPIRY = "trial_expiry"
PERIOD_ROLLOVER = "period_rollover"
RENEWAL = "renewal"

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one run changed: the accounts affected and the webhooks to send after commit."""

    accounts: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)

    def queue(self, delivery_id: str | None) -> None:
        if delivery_id is not None:
            self.deliveries.append(delivery_id)


def claim_period(session: Session, task: str, account_id: str, period_key: str) -> bool:
    """True if this run is the first to claim the period; False if one already did.

    The savepoint keeps a lost race (IntegrityError on the unique key) from spoiling the
    caller's transaction. On PostgreSQL a concurrent claimer waits for the first one's
    commit and then loses; on SQLite transactions are serialised by BEGIN IMMEDIATE.
    """
    try:
        with session.begin_nested():
            session.add(PeriodRun(task=task, account_id=account_id, period_key=period_key))
            session.flush()
    except IntegrityError:
        return False
    return True


def _key(moment: datetime) -> str:
    return as_utc(moment).isoformat()


# --- trials ---------------------------------------------------------------------------


def expire_trials(session: Session, now: datetime, warn_before: timedelta) -> RunReport:
    """Warn trials ending within `warn_before` (`account.trial_ending`, once per trial
    end), then suspend trials past their end (seeds: "Trial Expires -> status =
    'suspended'"). No credits move; each change goes to the account event log."""
    report = RunReport()
    ending = session.scalars(
        select(Account)
        .where(
            Account.status == "trial",
            Account.trial_ends_at > now,
            Account.trial_ends_at <= now + warn_before,
        )
        .execution_options(populate_existing=True)
    )
    for account in ending:
        assert account.trial_ends_at is not None
        ends = _key(account.trial_ends_at)
        if not claim_period(session, TRIAL_WARNING, account.id, ends):
            continue
        days_left = max((as_utc(account.trial_ends_at) - now).days, 0)
        data = {"trial_ends_at": ends, "days_left": days_left}
        session.add(AccountEvent(account_id=account.id, type="trial_ending", data=data))
        report.warned.append(account.id)
        report.queue(queue_account_event(session, account, "account.trial_ending", data, now))

    expired = session.scalars(
        select(Account)
        .where(Account.status == "trial", Account.trial_ends_at <= now)
        .execution_options(populate_existing=True)
    )
    for account in expired:
        assert account.trial_ends_at is not None
        ends = _key(account.trial_ends_at)
        if not claim_period(session, TRIAL_EXPIRY, account.id, ends):
            continue
        if not move_status(
            session, account.id, "suspended", "trial_expired", expected="trial", trial_ends_at=ends
        ):
            continue
        report.accounts.append(account.id)
        report.queue(
            queue_account_event(
                session,
                account,
                "account.suspended",
                {"status": "suspended", "reason": "trial_expired", "trial_ends_at": ends},
                now,
            )
        )
    session.flush()
    return report


# --- usage periods --------------------------------------------------------------------


def roll_over_periods(session: Session, now: datetime) -> RunReport:
    """Move every account whose usage period has ended into the period containing `now`
    (calendar months on the account's anchor day) and reset its Ahrefs query count.

    Several missed periods collapse into one move and one reset.
    """
    report = RunReport()
    due = session.scalars(
        select(Account)
        .where(Account.period_start.is_not(None), Account.period_end <= now)
        .execution_options(populate_existing=True)
    )
    for account in due:
        roll_over_account(session, account, now, report)
    session.flush()
    return report


def roll_over_account(session: Session, account: Account, now: datetime, report: RunReport) -> None:
    """`roll_over_periods` for one account whose period has ended (claimed once)."""
    assert account.period_start is not None
    assert account.period_end is not None
    start, end = as_utc(account.period_start), as_utc(account.period_end)
    while end <= now:
        start, end = end, next_period_end(start, end)
    if not claim_period(session, PERIOD_ROLLOVER, account.id, _key(start)):
        return
    moved = session.execute(
        update(Account)
        .where(Account.id == account.id, Account.period_end == account.period_end)
        .values(period_start=start, period_end=end, usage_ahrefs_queries=0)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not moved:
        return
    data = {
        "period_start": _key(start),
        "period_end": _key(end),
        "ahrefs_queries_reset_from": account.usage_ahrefs_queries,
    }
    session.add(AccountEvent(account_id=account.id, type="period_started", data=data))
    report.accounts.append(account.id)
    _apply_scheduled_plan(session, account)
    # As committed now (the UPDATE above holds the row): a payment that extended the
    # prepaid time since the due accounts were read is not asked for again.
    session.refresh(account, ["paid_until"])
    paid_until = as_utc(account.paid_until) if account.paid_until else None
    if paid_until is not None and as_utc(account.period_start) < paid_until <= start:
        _ask_for_payment(session, account, paid_until, now, report)


def _apply_scheduled_plan(session: Session, account: Account) -> None:
    """A downgrade waiting for the period end takes effect now. A plan that is not paid
    for (free) ends the prepaid time too, so nothing asks for a payment.

    It was accepted because the account fitted, and additions since were held to it,
    but one that slipped through anyway would leave the account over its new limits:
    then the account keeps its plan, the downgrade is called off, and the event says
    what did not fit (the owner may remove it and ask again). The period's UPDATE holds
    the account's row lock, so the count is not racing an addition."""
    session.refresh(account, ["plan_id", "scheduled_plan_id", "plan", "scheduled_plan"])
    later = account.scheduled_plan
    if later is None:
        return
    data = {"from": account.plan.slug if account.plan else None, "to": later.slug}
    over = excess(session, account, later)
    if over:
        account.scheduled_plan = None
        session.add(
            AccountEvent(
                account_id=account.id,
                type="plan_change_skipped",
                data={**data, "reason": "over_limits", "over": over},
            )
        )
        log.warning(
            "account %s stays on %s: the scheduled %s plan does not fit it (%s)",
            account.id,
            data["from"],
            later.slug,
            over,
        )
        session.flush()
        return
    account.plan, account.scheduled_plan = later, None
    if not is_renewable(later):
        account.paid_until = None
        # A free plan waits for no payment.
        move_status(session, account.id, "active", "free_plan", expected="pending_payment")
    session.add(AccountEvent(account_id=account.id, type="plan_changed", data=data))
    session.flush()


def _ask_for_payment(
    session: Session, account: Account, paid_until: datetime, now: datetime, report: RunReport
) -> bool:
    """The prepaid time is over: active -> pending_payment (credits left stay spendable;
    renewal waits for the next payment). False when the account was not active."""
    reason, until = "prepaid_period_ended", _key(paid_until)
    if not move_status(
        session, account.id, "pending_payment", reason, expected="active", paid_until=until
    ):
        return False
    data = {"status": "pending_payment", "reason": reason, "paid_until": until}
    report.queue(queue_account_event(session, account, "account.payment_due", data, now))
    return True


def ask_if_prepaid_ended(
    session: Session, account: Account, now: datetime, report: RunReport
) -> bool:
    """An account made active again whose current period started at or after its
    `paid_until` and was never asked to pay for it (an admin had suspended it when the
    rollover reached `paid_until`, and the rollover asks only active accounts) is asked
    now: active -> pending_payment, `account.payment_due`. True when it was: its period
    is not paid for, so nothing may credit it. A period already credited, or a prepaid
    end already asked for (an admin who then set it `active` put it on monthly renewal),
    is left alone."""
    if account.paid_until is None or account.period_start is None:
        return False
    paid_until, start = as_utc(account.paid_until), as_utc(account.period_start)
    if start < paid_until or _claimed(session, RENEWAL, account.id, _key(start)):
        return False
    if has_event(
        session, account.id, "status_changed",
        reason="prepaid_period_ended", paid_until=_key(paid_until),
    ):  # fmt: skip
        return False
    return _ask_for_payment(session, account, paid_until, now, report)


# --- renewal --------------------------------------------------------------------------


# A payment credits every month it pays for at once (billing/credits.py), so a period
# that starts before its `paid_until` is already paid for: nothing may grant it again.
_PREPAID = and_(Account.paid_until.is_not(None), Account.period_start < Account.paid_until)


def period_prepaid(account: Account) -> bool:
    """`_PREPAID` for a loaded account."""
    return (
        account.paid_until is not None
        and account.period_start is not None
        and as_utc(account.period_start) < as_utc(account.paid_until)
    )


def renew_credits(session: Session, now: datetime) -> RunReport:
    """Grant the plan's included credits to active paid accounts, once per period.

    Periods are rolled over first, so renewal never waits for the reset task. The
    grant's ledger reference (`renewal:<period start>`) is unique per account too: a
    second line of defence behind the period claim.
    """
    report = RunReport(deliveries=roll_over_periods(session, now).deliveries)
    rows = session.execute(
        select(Account, Plan)
        .join(Plan, Account.plan_id == Plan.id)
        .where(
            Account.status == "active",
            Account.period_start.is_not(None),
            Plan.included_credits > 0,
            or_(Plan.price > 0, Plan.is_internal),
            ~_PREPAID,
        )
        .execution_options(populate_existing=True)
    ).all()
    for account, plan in rows:
        assert account.period_start is not None
        if not _opened_by_rollover(session, account.id, _key(account.period_start)):
            continue
        try:
            # One account's failure (a value the database refuses) must not cost every
            # other account its month: its grant is undone alone, and tried next run.
            with session.begin_nested():
                granted = grant_period(session, account, plan)
        except SQLAlchemyError:
            log.exception("renewal of account %s failed; the others go on", account.id)
            continue
        if granted:
            report.accounts.append(account.id)
    return report


def grant_period(session: Session, account: Account, plan: Plan, note: str = "") -> bool:
    """The plan's credits for the account's current period, once: the period's renewal
    claim is the gate, and the grant's reference (`renewal:<period start>`) backs it.
    False when the period was already credited, by an earlier grant or by the payment
    that prepaid it (an admin's suspend-and-reactivate of a paid account grants nothing)."""
    assert account.period_start is not None
    if period_prepaid(account):
        return False
    key = _key(account.period_start)
    if not claim_period(session, RENEWAL, account.id, key):
        return False
    ledger.grant(
        session,
        account.id,
        plan.included_credits,
        "renewal",
        f"{plan.name} plan: {plan.included_credits:,} credits for the period from "
        f"{as_utc(account.period_start):%Y-%m-%d}{note}",
        reference=f"renewal:{key}",
        metadata={"period_start": key, "plan": plan.slug},
    )
    return True


def _opened_by_rollover(session: Session, account_id: str, period_key: str) -> bool:
    return _claimed(session, PERIOD_ROLLOVER, account_id, period_key)


def _claimed(session: Session, task: str, account_id: str, period_key: str) -> bool:
    return (
        session.scalar(
            select(PeriodRun.id).where(
                PeriodRun.task == task,
                PeriodRun.account_id == account_id,
                PeriodRun.period_key == period_key,
            )
        )
        is not None
    )
