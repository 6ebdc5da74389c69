"""Accounts: registration, API keys, access checks and admin changes.

Access is checked in one place (`check_access`) and every auth path calls it, so a
suspended account cannot slip in through an API key (a bug the seeds list).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import ledger
from billing.errors import (
    AccountInactive,
    EmailTaken,
    InvalidInput,
    NotFound,
    SubscriptionRequired,
)
from billing.limits import limits_report
from models import ACCOUNT_STATUSES, Account, ApiKey, Plan, User, as_utc, utcnow

REGISTRATION_PLANS = ("free-trial", "free")
API_KEY_PREFIX = "aij_"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class Registration:
    account: Account
    user: User
    api_key: str


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    _, salt_hex, digest_hex = stored.split("$")
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def register(
    session: Session, email: str, password: str, name: str, trial_days: int
) -> Registration:
    """Free-trial (else free) plan, status trial, credits seeded by one grant."""
    email = email.strip().lower()
    if session.scalar(select(User.id).where(User.email == email)):
        raise EmailTaken("An account with this email already exists.", field="email")
    plan = None
    for slug in REGISTRATION_PLANS:
        plan = session.scalar(select(Plan).where(Plan.slug == slug, Plan.is_active))
        if plan is not None:
            break
    if plan is None:
        raise LookupError("neither the free-trial nor the free plan exists (run `seed`)")
    now = utcnow()
    account = Account(
        name=name or email.split("@")[0],
        plan=plan,
        status="trial",
        trial_ends_at=now + timedelta(days=trial_days),
        period_start=now,
        period_end=_add_month(now),
    )
    session.add(account)
    session.flush()
    user = User(
        account_id=account.id,
        email=email,
        name=name,
        password_hash=hash_password(password),
        role="owner",
    )
    session.add(user)
    session.flush()
    if plan.included_credits:
        ledger.grant(
            session,
            account.id,
            plan.included_credits,
            "registration",
            f"{plan.name} credits on registration",
        )
    key = create_api_key(session, account.id, user.id, "default")
    session.refresh(account)
    return Registration(account=account, user=user, api_key=key)


def _add_month(value: Any) -> Any:
    month = value.month % 12 + 1
    year = value.year + (value.month == 12)
    day = min(
        value.day,
        [
            31,
            29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ][month - 1],
    )
    return value.replace(year=year, month=month, day=day)


def create_api_key(session: Session, account_id: str, user_id: str | None, name: str) -> str:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            account_id=account_id,
            user_id=user_id,
            name=name,
            prefix=key[:12],
            key_hash=hash_api_key(key),
        )
    )
    return key


def authenticate_api_key(session: Session, key: str) -> tuple[Account, User | None]:
    """The account behind a key, after the same access check as every auth path."""
    api_key = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )
    if api_key is None:
        raise NotFound("Invalid API key.")
    account = session.get(Account, api_key.account_id)
    if account is None:
        raise NotFound("Invalid API key.")
    check_access(account)
    user = session.get(User, api_key.user_id) if api_key.user_id else None
    return account, user


def check_access(account: Account) -> None:
    if account.status in ("suspended", "cancelled"):
        raise AccountInactive(account.status)
    if account.plan is None or not account.plan.is_active:
        raise SubscriptionRequired(
            "Active subscription required. Choose a plan to continue.", plan=None
        )


def get_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"Account {account_id!r} not found.")
    return account


def admin_update(
    session: Session, account_id: str, status: str | None, plan_slug: str | None
) -> Account:
    """Status or plan change; a plan change keeps the account's data and balance."""
    account = get_account(session, account_id)
    if status is not None:
        if status not in ACCOUNT_STATUSES:
            raise InvalidInput(
                f"Unknown status {status!r}.", fields={"status": f"one of {ACCOUNT_STATUSES}"}
            )
        account.status = status
    if plan_slug is not None:
        plan = session.scalar(select(Plan).where(Plan.slug == plan_slug))
        if plan is None:
            raise InvalidInput(f"Unknown plan {plan_slug!r}.", fields={"plan": "unknown plan"})
        account.plan = plan
    session.flush()
    return account


def account_view(session: Session, account: Account) -> dict[str, Any]:
    plan = account.plan
    return {
        "id": account.id,
        "name": account.name,
        "status": account.status,
        "plan": plan_view(plan) if plan else None,
        "credits": credits_view(account),
        "limits": limits_report(session, account),
        "trial_ends_at": as_utc(account.trial_ends_at).isoformat()
        if account.trial_ends_at
        else None,
        "period_start": as_utc(account.period_start).isoformat() if account.period_start else None,
        "period_end": as_utc(account.period_end).isoformat() if account.period_end else None,
        "created_at": as_utc(account.created_at).isoformat(),
    }


def credits_view(account: Account) -> dict[str, int]:
    return {
        "balance": account.credits,
        "reserved": account.reserved_credits,
        "available": account.available_credits,
    }


def plan_view(plan: Plan) -> dict[str, Any]:
    return {
        "slug": plan.slug,
        "name": plan.name,
        "price": str(plan.price),
        "billing_cycle": plan.billing_cycle,
        "included_credits": plan.included_credits,
        "max_sites": plan.max_sites,
        "max_users": plan.max_users,
        "max_keywords": plan.max_keywords,
        "max_ahrefs_queries": plan.max_ahrefs_queries,
        "allow_credit_topup": plan.allow_credit_topup,
        "features": plan.features,
        "force_default_models": plan.force_default_models,
        "allowed_text_models": plan.allowed_text_models,
        "allowed_image_models": plan.allowed_image_models,
    }
