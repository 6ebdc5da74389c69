"""Which plan an account is on, and how that changes: sign-up (free or paid), owner
plan changes, and admin changes that activate an account.

- Free plans start as a trial with their credits (one registration grant).
- A paid plan starts `pending_payment` with no credits and a first subscription purchase;
  paying it (admin or Stripe, billing/purchases.py) activates the plan with its credits.
- Upgrades (a higher price) take effect when their purchase is paid.
- Downgrades wait for the period end (billing/lifecycle.py applies them at the rollover)
  and are refused while the account holds more sites, users or keywords than they allow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import accounts, purchases
from billing.credits import grant_period_credits
from billing.errors import Conflict, InvalidInput, PlanTooSmall
from billing.limits import LIMITS, excess, lock_account
from billing.plans import is_renewable
from models import Account, Plan, Purchase, as_utc


@dataclass(frozen=True)
class SignUp:
    registration: accounts.Registration
    purchase: Purchase | None  # a paid plan's first payment, to pay before it starts


@dataclass(frozen=True)
class PlanChange:
    kind: str  # "upgrade" | "downgrade" | "renewal" | "kept"
    plan: Plan
    effective_at: datetime | None  # None: when the purchase is paid
    purchase: Purchase | None
    # Stripe checkouts of the plan purchases this change superseded, to close after commit.
    closed_checkouts: tuple[str, ...] = ()


def public_plan(session: Session, slug: str) -> Plan:
    """A plan a customer may choose: active and not internal."""
    plan = session.scalar(
        select(Plan).where(Plan.slug == slug, Plan.is_active, Plan.is_internal.is_(False))
    )
    if plan is None:
        raise InvalidInput(
            f"Unknown plan {slug!r}; GET /v1/plans lists the plans you can choose.",
            fields={"plan": "a slug from GET /v1/plans"},
        )
    return plan


def sign_up(
    session: Session,
    email: str,
    password: str,
    name: str,
    trial_days: int,
    plan_slug: str | None = None,
) -> SignUp:
    """Register on a free plan (a trial, as before) or on a paid one (pending payment)."""
    plan = public_plan(session, plan_slug) if plan_slug is not None else None
    registration = accounts.register(session, email, password, name, trial_days, plan)
    purchase = None
    if registration.account.status == "pending_payment":
        purchase = purchases.create_subscription(
            session, registration.account, plan_of(registration.account)
        )
    return SignUp(registration, purchase)


def plan_of(account: Account) -> Plan:
    if account.plan is None:
        raise InvalidInput("The account has no plan.")
    return account.plan


def request_change(session: Session, account: Account, slug: str, now: datetime) -> PlanChange:
    """An owner's plan change: pay for an upgrade, schedule a downgrade, or pay again for
    the current plan when its prepaid time ran out (`pending_payment`).

    The account is locked and re-read first, so what it holds is counted after any
    addition that got in before (and one that comes after sees the scheduled plan).
    An account on a retired (inactive) plan, or on none, leaves it: a free plan now, a
    paid one when its purchase is paid."""
    lock_account(session, account.id)
    session.refresh(account)
    change = _change(session, account, public_plan(session, slug), now)
    # One plan change waits for payment at a time: paying a superseded purchase later
    # would switch plans behind this choice, past its checks.
    keep = change.purchase.id if change.purchase else None
    closed = purchases.supersede_plan_purchases(session, account.id, now, keep=keep)
    return replace(change, closed_checkouts=closed)


def _change(session: Session, account: Account, plan: Plan, now: datetime) -> PlanChange:
    current = account.plan
    unpaid = account.status == "pending_payment"
    if current is None or not current.is_active or (unpaid and plan.id != current.id):
        # Nothing paid to wait out: the plan starts when paid, a free one at once.
        check_fits(session, account, plan)
        reason = "unpaid_plan" if current is not None and current.is_active else "retired_plan"
        return _leave_plan_now(session, account, plan, now, reason)
    if plan.id == current.id:
        if unpaid and is_renewable(plan):
            purchase = purchases.create_subscription(session, account, plan)
            return PlanChange("renewal", plan, None, purchase)
        if account.scheduled_plan_id is not None:
            account.scheduled_plan = None  # staying: the waiting downgrade is called off
            session.flush()
            return PlanChange("kept", plan, now, None)
        raise Conflict(f"You are already on the {plan.name} plan.", plan=plan.slug)
    check_fits(session, account, plan)
    if plan.price > current.price:
        purchase = purchases.create_subscription(session, account, plan)
        return PlanChange("upgrade", plan, None, purchase)
    account.scheduled_plan = plan
    session.flush()
    return PlanChange("downgrade", plan, account.period_end, None)


def _leave_plan_now(
    session: Session, account: Account, plan: Plan, now: datetime, reason: str
) -> PlanChange:
    """Nothing to wait for on a plan that is no longer offered, or one never paid for
    (`pending_payment`): a paid plan starts when its purchase is paid (as an upgrade
    does), a free one at once (ending any prepaid time, and the wait for a payment)."""
    current = account.plan
    if plan.price > 0:
        purchase = purchases.create_subscription(session, account, plan)
        return PlanChange("upgrade", plan, None, purchase)  # "when paid", whatever the price
    account.plan, account.scheduled_plan = plan, None
    account.paid_until = None  # nothing is prepaid on a free plan
    data = {"from": current.slug if current else None, "to": plan.slug, "reason": reason}
    accounts.record_event(session, account.id, "plan_changed", **data)
    if accounts.move_status(session, account.id, "active", reason, expected="pending_payment"):
        session.refresh(account, ["status"])
    session.flush()
    return PlanChange("downgrade", plan, now, None)


def check_fits(session: Session, account: Account, plan: Plan) -> None:
    """Refuse a plan whose limits the account already exceeds, naming what to remove."""
    over = excess(session, account, plan)
    if not over:
        return
    remove = ", ".join(
        f"{numbers['remove']:,} {LIMITS[name].noun} (you have {numbers['used']:,}, "
        f"it allows {numbers['limit']:,})"
        for name, numbers in over.items()
    )
    raise PlanTooSmall(
        f"Your account does not fit in the {plan.name} plan. Remove {remove} first, then "
        "ask again.",
        plan=plan.slug,
        over=over,
    )


def admin_change(
    session: Session, account_id: str, status: str | None, plan_slug: str | None, now: datetime
) -> Account:
    """An admin's status or plan change; one that activates the account grants the
    plan's credits for the current period, once."""
    before = accounts.get_account(session, account_id).status
    account = accounts.admin_update(session, account_id, status, plan_slug)
    if status == "active" and before != "active":
        grant_period_credits(session, account, now)
        session.refresh(account)
    return account


def plan_change_view(change: PlanChange) -> dict[str, Any]:
    return {
        "kind": change.kind,
        "plan": change.plan.slug,
        "effective_at": as_utc(change.effective_at).isoformat() if change.effective_at else None,
        "purchase": purchases.purchase_view(change.purchase) if change.purchase else None,
    }
