"""Accounts: registration, API keys, access checks and admin changes.

Access is checked in one place (`check_access`) and every auth path calls it, so a
suspended account cannot slip in through an API key (a bug the seeds list).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import ColumnElement, and_, bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import ledger
from billing.admission import concurrency_view
from billing.emails import normalize_email
from billing.errors import (
    AccountInactive,
    EmailTaken,
    Forbidden,
    InvalidInput,
    NotFound,
    SubscriptionRequired,
)
from billing.limits import limits_report, lock_account
from billing.periods import add_months
from billing.permissions import require, require_outranks
from models import (
    ACCOUNT_STATUSES,
    CATALOG_VERSION,
    Account,
    AccountEvent,
    AISettings,
    ApiKey,
    Invitation,
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
    session: Session,
    email: str,
    password: str,
    name: str,
    trial_days: int,
    plan: Plan | None = None,
) -> Registration:
    """A new account and its owner. A free plan (default: free-trial, else free) starts a
    trial with the plan's credits in one grant; a paid plan starts `pending_payment` with
    no credits (billing/subscriptions.py asks for its first payment)."""
    email = email.strip().lower()
    plan = plan or _registration_plan(session)
    paid = plan.price > 0
    now = utcnow()
    account = Account(
        name=name or email.split("@")[0],
        plan=plan,
        status="pending_payment" if paid else "trial",
        trial_ends_at=None if paid else now + timedelta(days=trial_days),
        period_start=now,
        period_end=add_months(now, 1),
    )
    session.add(account)
    session.flush()
    user = _new_owner(session, account.id, email, name, password, now)
    if plan.included_credits and not paid:
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


def _registration_plan(session: Session) -> Plan:
    for slug in REGISTRATION_PLANS:
        plan = session.scalar(select(Plan).where(Plan.slug == slug, Plan.is_active))
        if plan is not None:
            return plan
    raise LookupError("neither the free-trial nor the free plan exists (run `seed`)")


def _new_owner(
    session: Session, account_id: str, email: str, name: str, password: str, now: datetime
) -> User:
    """The registering owner, after the address's pending invitations are withdrawn. A
    user who holds the address (`holds_address`) keeps it: 409 `email_taken`."""
    withdraw_invitations(session, email, now)
    return new_user(session, account_id, email, name, password, "owner", joined_at=now)


def same_mailbox(email: str) -> ColumnElement[bool]:
    """The users of `email`'s mailbox: the same email, or the same normalised one."""
    return or_(User.email == email, User.email_normalized == normalize_email(email))


def holds_address() -> ColumnElement[bool]:
    """The users who hold their address against every other account (one mailbox, one
    login): those who joined (registration, an accepted invitation; owners always have),
    and members from before invitations with a live key (keys were handed out directly
    then, and may be in use), which no code makes any more. The unique indexes over
    joined users (models/account.py) back it against concurrent claims. A member merely
    invited holds nothing: any number of accounts may invite one address, each once."""
    live_key = select(ApiKey.id).where(ApiKey.user_id == User.id, ApiKey.revoked_at.is_(None))
    return or_(User.joined_at.is_not(None), User.role == "owner", live_key.exists())


def address_holder(session: Session, email: str, *, other_than: str | None = None) -> User | None:
    """The user who holds `email`'s mailbox (at most one), other than `other_than`."""
    query = select(User).where(same_mailbox(email), holds_address())
    if other_than is not None:
        query = query.where(User.id != other_than)
    return session.scalars(query.limit(1)).first()


def pending_invitees(email: str) -> ColumnElement[bool]:
    """The members invited with `email`'s mailbox who hold nothing (not joined)."""
    return and_(same_mailbox(email), ~holds_address())


def invited_in(session: Session, email: str) -> list[str]:
    """The accounts where `email`'s mailbox has a pending (not joined) member, by id."""
    return sorted(set(session.scalars(select(User.account_id).where(pending_invitees(email)))))


def withdraw_invitations(
    session: Session,
    email: str,
    now: datetime,
    *,
    reason: str = "email_registered",
    locked: Collection[str] | None = None,
) -> list[User]:
    """An invitation reserves nothing against the mailbox's owner: anyone may invite any
    address, so registering it, or accepting an invitation of it, removes the members
    invited with it (by normalised email) who have not joined, with their invitations
    and keys (`delete_user`), from every (other) account that invited them. Their
    invitation links then find nothing (404).

    Each inviting account is locked (in id order, so two registrations cannot deadlock)
    and its pending members re-read under the lock, which every acceptance takes too:
    an acceptance that committed first keeps its member, one that comes after finds its
    invitation gone. `locked`: the caller already holds these accounts' locks, taken in
    id order with its own; only their members are withdrawn, so no lock is ever taken
    out of order (an invitation committed since the caller looked stays, and its
    acceptance answers 409). Returns the members withdrawn."""
    account_ids = invited_in(session, email)
    if locked is not None:
        account_ids = [account_id for account_id in account_ids if account_id in locked]
    if not account_ids:
        return []
    for account_id in account_ids:
        lock_account(session, account_id)
    members = list(
        session.scalars(
            select(User)
            .where(pending_invitees(email), User.account_id.in_(account_ids))
            .execution_options(populate_existing=True)
        )
    )
    for member in members:
        record_event(
            session, member.account_id, "invitation_withdrawn",
            user_id=member.id, email=member.email, role=member.role, reason=reason,
        )  # fmt: skip
        delete_user(session, member, now)
    return members


def delete_user(session: Session, user: User, now: datetime) -> int:
    """The member goes: their keys are revoked (and stay listed, no longer tied to the
    user), their invitations deleted, the user row deleted (login tokens then match no
    one). Returns how many keys were revoked."""
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id)
        .values(user_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(Invitation).where(Invitation.user_id == user.id))
    session.delete(user)
    session.flush()
    return int(revoked)


def new_user(
    session: Session,
    account_id: str,
    email: str,
    name: str,
    password: str,
    role: str,
    *,
    joined_at: datetime | None,
) -> User:
    """One login per mailbox, and one user per mailbox in an account: refused when a
    user holds the address (`holds_address`) or the account has it already (unique
    indexes back the check against a concurrent registration or acceptance)."""
    normalized = normalize_email(email)
    taken = EmailTaken(
        "An account with this email already exists (addresses that differ only in case, "
        "or for providers that ignore them in dots or a +tag, are the same mailbox).",
        field="email",
    )
    if session.scalar(
        select(User.id).where(
            same_mailbox(email), or_(holds_address(), User.account_id == account_id)
        )
    ):
        raise taken
    user = User(
        account_id=account_id,
        email=email,
        email_normalized=normalized,
        name=name,
        password_hash=hash_password(password),
        role=role,
        joined_at=joined_at,
    )
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise taken from None
    return user


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


def issue_api_key(session: Session, account_id: str, actor: User, name: str) -> tuple[ApiKey, str]:
    """A new key of the actor's own, after `acting_role`: a removal committed since the
    request read its caller must not leave a key naming a deleted member, nor a
    demotion let a key be made with the role the member no longer has."""
    acting_role(session, account_id, actor, "manage_keys")
    return create_api_key(session, account_id, actor.id, name)


class Caller(NamedTuple):
    """Who is calling, and what the same read saw for the model policy
    (billing.policy.Seen): the catalog's version stamp and whether the account has any
    model preference (None: not read, e.g. with a login token)."""

    account: Account
    user: User
    catalog_version: int | None = None
    has_model_preferences: bool | None = None


def authenticate(
    session: Session, bearer: str, secret: str, max_age: int, *, choosing_plan: bool = False
) -> Caller:
    """The caller behind an API key or a login token, after the one access check.

    Both auth paths end in `check_access`, so a suspended or cancelled account is
    refused whichever credential it presents. Nothing about a key is cached: a revoked
    key fails on its very next request, in every process. `choosing_plan`: the request
    is one that lets an account without an active plan choose one (`check_access`).
    """
    if bearer.startswith(LOGIN_TOKEN_PREFIX):
        user = _user_for_token(session, bearer, secret, max_age)
        account = session.get(Account, user.account_id)
        if account is None:
            raise NotFound("Invalid credentials.")
        check_access(account, choosing_plan=choosing_plan)
        return Caller(account, user)
    caller = _owner_of_api_key(session, bearer)
    check_access(caller.account, choosing_plan=choosing_plan)
    return caller


# The API-key read, built once (it runs on every request): the key's user, the account
# with its plan (joined by the relationship), and for the model policy the catalog stamp
# and whether the account has a model preference.
_p_key_hash = bindparam("key_hash", type_=ApiKey.key_hash.type)
_OWNER_OF_KEY = (
    select(
        User,
        Account,
        CATALOG_VERSION,
        select(AISettings.id).where(AISettings.account_id == Account.id).exists(),
    )
    .join(ApiKey, ApiKey.user_id == User.id)
    .join(Account, Account.id == User.account_id)
    .where(ApiKey.key_hash == _p_key_hash, ApiKey.revoked_at.is_(None))
)


def _owner_of_api_key(session: Session, key: str) -> Caller:
    row = session.execute(_OWNER_OF_KEY, {"key_hash": hash_api_key(key)}).one_or_none()
    if row is None:
        raise NotFound("Invalid API key.")
    return Caller(account=row[1], user=row[0], catalog_version=row[2], has_model_preferences=row[3])


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="aijobs-login")


def _user_for_token(session: Session, token: str, secret: str, max_age: int) -> User:
    try:
        payload = _serializer(secret).loads(token[len(LOGIN_TOKEN_PREFIX) :], max_age=max_age)
    except BadSignature:
        raise NotFound("Invalid or expired login token.") from None
    user = session.get(User, payload.get("user")) if isinstance(payload, dict) else None
    if user is None or payload != _token_claims(user):
        raise NotFound("Invalid or expired login token.")
    return user


def _token_claims(user: User) -> dict[str, Any]:
    """What a login token asserts; it stays valid only while all of it still holds.

    The password hash tail revokes tokens when the password changes, the token version
    when the member's role changes (and removal deletes the user outright).
    """
    return {"user": user.id, "pw": user.password_hash[-16:], "v": user.token_version}


def issue_login_token(user: User, secret: str) -> str:
    return LOGIN_TOKEN_PREFIX + _serializer(secret).dumps(_token_claims(user))


@cache
def _dummy_password_hash() -> str:
    """A hash of no one's password, made once per process on first use (not at import,
    which would cost every worker and CLI a scrypt) with `hash_password`'s parameters."""
    return hash_password(secrets.token_urlsafe(32))


def login(session: Session, email: str, password: str, secret: str) -> tuple[User, str]:
    """Email + password -> a signed, expiring login token (the second auth path).

    An unknown email is checked against a dummy hash, so both paths cost one scrypt and
    the response time does not tell whether an email has an account. An account without
    an active plan may log in: its token reaches only what choosing a plan needs
    (`check_access` runs again on every request).
    """
    # Only the user who holds the address logs in; its pending invitations (other rows
    # of the same email, with passwords nobody knows) never do.
    user = session.scalar(select(User).where(User.email == email.strip().lower(), holds_address()))
    stored = user.password_hash if user is not None else _dummy_password_hash()
    if not verify_password(password, stored) or user is None:
        raise NotFound("Wrong email or password.")
    account = session.get(Account, user.account_id)
    if account is None:
        raise NotFound("Wrong email or password.")
    check_access(account, choosing_plan=True)
    return user, issue_login_token(user, secret)


def list_users(session: Session, account_id: str) -> list[User]:
    query = select(User).where(User.account_id == account_id).order_by(User.created_at)
    return list(session.scalars(query))


def list_api_keys(session: Session, account_id: str) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at)
    return list(session.scalars(query))


def revoke_api_key(session: Session, account_id: str, actor: User, key_id: str) -> ApiKey:
    """Your own keys, or those of members below your role (never the owner's, for an
    admin)."""
    role = acting_role(session, account_id, actor, "manage_keys")
    api_key = session.get(ApiKey, key_id)
    if api_key is None or api_key.account_id != account_id:
        raise NotFound(f"API key {key_id!r} not found.")
    if api_key.user_id != actor.id:
        holder = session.scalar(select(User.role).where(User.id == api_key.user_id))
        require_outranks(role, holder, "the API keys")
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
    session.flush()
    return api_key


def acting_role(session: Session, account_id: str, actor: User, action: str) -> str:
    """The actor's role as it is now, read under the account lock that serialises every
    team change, and checked again for `action`: a demotion or removal committed a
    moment ago counts (an admin demoted to editor still outranks a viewer, but may no
    longer manage anyone)."""
    lock_account(session, account_id)
    role = session.scalar(
        select(User.role).where(User.id == actor.id, User.account_id == account_id)
    )
    if role is None:
        raise Forbidden("You are no longer a member of this account.")
    require(role, action)
    return role


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "status": "active" if user.joined_at else "invited",
        "joined_at": as_utc(user.joined_at).isoformat() if user.joined_at else None,
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


def check_access(account: Account, *, choosing_plan: bool = False) -> None:
    """The one refusal for every auth path. Suspended and cancelled accounts get nothing;
    an account whose plan is missing or retired (inactive) gets only what it needs to
    choose a plan (`choosing_plan`: its account and the plan change), as the 402 says."""
    if account.status in ("suspended", "cancelled"):
        raise AccountInactive(account.status)
    if choosing_plan:
        return
    if account.plan is None or not account.plan.is_active:
        raise SubscriptionRequired(
            "Active subscription required. Choose a plan to continue.", plan=None
        )


def get_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"Account {account_id!r} not found.")
    return account


def record_event(session: Session, account_id: str, type_: str, **data: Any) -> None:
    """A change to the account that moves no credits, for the record (`account_events`)."""
    session.add(AccountEvent(account_id=account_id, type=type_, data=data))


def has_event(session: Session, account_id: str, type_: str, **data: Any) -> bool:
    """Whether the record holds an event of `type_` whose data has these values: what
    keeps a once-only event from being written twice (compared in Python: the JSON
    column is not queried by key the same way on both databases)."""
    recorded = session.scalars(
        select(AccountEvent.data).where(
            AccountEvent.account_id == account_id, AccountEvent.type == type_
        )
    )
    return any(all(row.get(k) == v for k, v in data.items()) for row in recorded)


def held_by_admin(session: Session, account_id: str, status: str | None) -> bool:
    """Whether `status` is a stop an admin put the account in (a suspension or a
    cancellation): a payment grants credits but never lifts it. A trial that merely
    expired (`trial_expired`) is lifted by paying."""
    if status not in ("suspended", "cancelled"):
        return False
    latest = session.scalar(
        select(AccountEvent)
        .where(AccountEvent.account_id == account_id, AccountEvent.type == "status_changed")
        .order_by(AccountEvent.id.desc())
        .limit(1)
    )
    return latest is None or latest.data.get("reason") != "trial_expired"


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
    """Status or plan change; a plan change keeps the account's data and balance, and
    calls off a downgrade the owner scheduled (it would otherwise undo the admin's plan
    at the rollover)."""
    account = get_account(session, account_id)
    if status is not None and move_status(session, account_id, status, "admin"):
        session.refresh(account, ["status"])
    if plan_slug is not None:
        plan = session.scalar(select(Plan).where(Plan.slug == plan_slug))
        if plan is None:
            raise NotFound(f"Plan {plan_slug!r} not found.")
        lock_account(session, account_id)  # an owner's plan change goes before or after
        session.refresh(account)
        if account.plan_id != plan.id:
            cancelled = account.scheduled_plan.slug if account.scheduled_plan else None
            data = {"from": account.plan.slug if account.plan else None, "to": plan.slug}
            account.plan, account.scheduled_plan = plan, None
            record_event(
                session,
                account_id,
                "plan_changed",
                **data,
                reason="admin",
                scheduled_plan_cancelled=cancelled,
            )
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
        "timezone": account.timezone,
        "payment_method": account.payment_method,
        "scheduled_plan": account.scheduled_plan.slug if account.scheduled_plan else None,
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
        "extra_credit_price": str(plan.extra_credit_price)
        if plan.extra_credit_price is not None
        else None,
        "features": plan.features,
        "force_default_models": plan.force_default_models,
        "allowed_text_models": plan.allowed_text_models,
        "allowed_image_models": plan.allowed_image_models,
        "requests_per_minute": plan.requests_per_minute,
        "max_concurrent_jobs": plan.max_concurrent_jobs,
        "is_internal": plan.is_internal,
        "is_active": plan.is_active,
    }
