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

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billing import ledger
from billing.admission import concurrency_view
from billing.errors import (
    AccountInactive,
    EmailTaken,
    InvalidInput,
    NotFound,
    SubscriptionRequired,
)
from billing.limits import ensure_room, limits_report
from billing.periods import add_months
from billing.permissions import ROLES
from models import (
    ACCOUNT_STATUSES,
    Account,
    AccountEvent,
    ApiKey,
    Plan,
    User,
    as_utc,
    utcnow,
)

REGISTRATION_PLANS = ("free-trial", "free")
API_KEY_PREFIX = "aij_"
LOGIN_TOKEN_PREFIX = "tok_"  # noqa: S105 - a prefix, not a secret
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
        period_end=add_months(now, 1),
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
    _, key = create_api_key(session, account.id, user.id, "default")
    session.refresh(account)
    return Registration(account=account, user=user, api_key=key)


def create_api_key(
    session: Session, account_id: str, user_id: str | None, name: str
) -> tuple[ApiKey, str]:
    """A new key: the row (hash and prefix only) and the key itself, to show once."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(
        account_id=account_id,
        user_id=user_id,
        name=name,
        prefix=key[:12],
        key_hash=hash_api_key(key),
    )
    session.add(api_key)
    session.flush()
    return api_key, key


def authenticate(session: Session, bearer: str, secret: str, max_age: int) -> tuple[Account, User]:
    """The caller behind an API key or a login token, after the one access check.

    Both auth paths end in `check_access`, so a suspended or cancelled account is
    refused whichever credential it presents.
    """
    if bearer.startswith(LOGIN_TOKEN_PREFIX):
        user = _user_for_token(session, bearer, secret, max_age)
        account = session.get(Account, user.account_id)
    else:
        user, account = _owner_of_api_key(session, bearer)
    if account is None:
        raise NotFound("Invalid credentials.")
    check_access(account)
    return account, user


def _owner_of_api_key(session: Session, key: str) -> tuple[User, Account]:
    """The key's user and account in one read (this runs on every request)."""
    row = session.execute(
        select(User, Account)
        .join(ApiKey, ApiKey.user_id == User.id)
        .join(Account, Account.id == User.account_id)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        raise NotFound("Invalid API key.")
    return row.User, row.Account


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="aijobs-login")


def _user_for_token(session: Session, token: str, secret: str, max_age: int) -> User:
    try:
        payload = _serializer(secret).loads(token[len(LOGIN_TOKEN_PREFIX) :], max_age=max_age)
    except BadSignature:
        raise NotFound("Invalid or expired login token.") from None
    user = session.get(User, payload.get("user")) if isinstance(payload, dict) else None
    if user is None or payload.get("pw") != user.password_hash[-16:]:
        raise NotFound("Invalid or expired login token.")
    return user


def login(session: Session, email: str, password: str, secret: str) -> tuple[User, str]:
    """Email + password -> a signed, expiring login token (the second auth path)."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not verify_password(password, user.password_hash):
        raise NotFound("Wrong email or password.")
    account = session.get(Account, user.account_id)
    if account is None:
        raise NotFound("Wrong email or password.")
    check_access(account)
    # The password hash tail in the token: changing the password revokes old tokens.
    token = _serializer(secret).dumps({"user": user.id, "pw": user.password_hash[-16:]})
    return user, LOGIN_TOKEN_PREFIX + token


def invite_user(
    session: Session, account: Account, email: str, role: str, name: str
) -> tuple[User, str]:
    """A new team member (limit: max_users) with an API key of their own, shown once."""
    if role not in ROLES or role == "owner":
        raise InvalidInput(
            "role must be admin, editor or viewer.", fields={"role": "admin|editor|viewer"}
        )
    email = email.strip().lower()
    if session.scalar(select(User.id).where(User.email == email)):
        raise EmailTaken("A user with this email already exists.", field="email")
    ensure_room(session, account, "users")
    user = User(
        account_id=account.id,
        email=email,
        name=name,
        role=role,
        password_hash=hash_password(secrets.token_urlsafe(32)),
    )
    session.add(user)
    session.flush()
    _, key = create_api_key(session, account.id, user.id, f"{email} (invited)")
    return user, key


def list_users(session: Session, account_id: str) -> list[User]:
    query = select(User).where(User.account_id == account_id).order_by(User.created_at)
    return list(session.scalars(query))


def list_api_keys(session: Session, account_id: str) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at)
    return list(session.scalars(query))


def revoke_api_key(session: Session, account_id: str, key_id: str) -> ApiKey:
    api_key = session.get(ApiKey, key_id)
    if api_key is None or api_key.account_id != account_id:
        raise NotFound(f"API key {key_id!r} not found.")
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
    session.flush()
    return api_key


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "created_at": as_utc(user.created_at).isoformat(),
    }


def api_key_view(api_key: ApiKey) -> dict[str, Any]:
    """Never the key itself: only its prefix, so a listing cannot leak it."""
    return {
        "id": api_key.id,
        "name": api_key.name,
        "prefix": api_key.prefix,
        "user_id": api_key.user_id,
        "created_at": as_utc(api_key.created_at).isoformat(),
        "revoked_at": as_utc(api_key.revoked_at).isoformat() if api_key.revoked_at else None,
    }


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


def move_status(
    session: Session,
    account_id: str,
    new: str,
    reason: str,
    *,
    expected: str | None = None,
    **details: str,
) -> bool:
    """The one way an account's status changes: `expected` (default: whatever it is now)
    -> `new`, only if the account still has that status, with an `AccountEvent` carrying
    the reason and details. False when nothing moved (already `new`, or moved meanwhile)."""
    if new not in ACCOUNT_STATUSES:
        raise InvalidInput(
            f"Unknown status {new!r}.", fields={"status": f"one of {', '.join(ACCOUNT_STATUSES)}"}
        )
    old = expected or session.scalar(select(Account.status).where(Account.id == account_id))
    if old is None or old == new:
        return False
    moved = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.status == old)
        .values(status=new)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if moved:
        data = {"from": old, "to": new, "reason": reason, **details}
        session.add(AccountEvent(account_id=account_id, type="status_changed", data=data))
    return bool(moved)


def admin_update(
    session: Session, account_id: str, status: str | None, plan_slug: str | None
) -> Account:
    """Status or plan change; a plan change keeps the account's data and balance."""
    account = get_account(session, account_id)
    if status is not None and move_status(session, account_id, status, "admin"):
        session.refresh(account, ["status"])
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
        "concurrency": concurrency_view(session, account),
        "trial_ends_at": as_utc(account.trial_ends_at).isoformat()
        if account.trial_ends_at
        else None,
        "period_start": as_utc(account.period_start).isoformat() if account.period_start else None,
        "period_end": as_utc(account.period_end).isoformat() if account.period_end else None,
        "paid_until": as_utc(account.paid_until).isoformat() if account.paid_until else None,
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
        "requests_per_minute": plan.requests_per_minute,
        "max_concurrent_jobs": plan.max_concurrent_jobs,
        "is_internal": plan.is_internal,
        "is_active": plan.is_active,
    }
