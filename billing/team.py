"""The team: invitations, role changes, removal and the transfer of ownership.

The rules (billing/permissions.py): nobody acts on a member of their own role or a
higher one; only the owner makes admins; the owner is never removed or demoted except
by handing ownership to a member who has joined. Every change starts with
`acting_role`, which locks the account row, re-reads the actor's role and checks it
allows the action, so team changes of one account happen one at a time and a demotion
committed a moment ago counts. Each change is written to `account_events` with who did it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.accounts import (
    acting_role,
    address_holder,
    check_access,
    create_api_key,
    delete_user,
    hash_password,
    invited_in,
    new_user,
    record_event,
    same_mailbox,
    withdraw_invitations,
)
from billing.errors import (
    Conflict,
    EmailTaken,
    InvitationGone,
    InvitationUsed,
    NotFound,
)
from billing.limits import ensure_room, lock_account
from billing.permissions import require_can_grant, require_outranks
from models import Account, ApiKey, Invitation, User, as_utc

INVITATION_PREFIX = "inv_"


@dataclass(frozen=True)
class Invite:
    """A new member and their invitation token (shown once). No API key: a key made here
    would be handed to the inviter, who could go on using it as the member, even after
    being removed themselves."""

    user: User
    invitation: Invitation
    token: str


@dataclass(frozen=True)
class Joined:
    """A member who accepted: their first API key, shown once, to them only."""

    user: User
    api_key: str


@dataclass(frozen=True)
class Removal:
    user: User
    keys_revoked: int


def invite_member(
    session: Session,
    account: Account,
    actor: User,
    email: str,
    role: str,
    name: str,
    *,
    now: datetime,
    ttl: timedelta,
) -> Invite:
    """A new member (limit: max_users) with an invitation to set a password; the seat is
    taken from the invitation on.

    The address may be invited by other accounts too (an invitation reserves nothing);
    refused only when someone holds it (a login of its own) or this team has it."""
    require_can_grant(acting_role(session, account.id, actor, "manage_team"), role)
    email = email.strip().lower()
    _refuse_taken_address(session, account.id, email)
    ensure_room(session, account, "users")
    user = new_user(
        session, account.id, email, name, secrets.token_urlsafe(32), role, joined_at=None
    )
    invitation, token = _new_invitation(session, user, now, ttl)
    _event(session, account.id, "member_invited", actor, user, role=role)
    return Invite(user=user, invitation=invitation, token=token)


def reissue_invitation(
    session: Session, account_id: str, actor: User, user_id: str, *, now: datetime, ttl: timedelta
) -> tuple[Invitation, str]:
    """A fresh token for a member who has not joined yet; earlier ones stop working."""
    role = acting_role(session, account_id, actor, "manage_team")
    user = _member(session, account_id, user_id)
    require_outranks(role, user.role, "the invitation")
    if user.joined_at is not None:
        raise Conflict(f"{user.email} has already joined.", reason="already_joined")
    return _new_invitation(session, user, now, ttl)


def accept_invitation(
    session: Session, token: str, password: str, name: str | None, now: datetime
) -> Joined:
    """Exchange the token for a password, once, before it expires; then login works.

    The member's first API key is made here, for them alone. Keys the member had before
    joining were made by someone else (invitations before this rule gave the inviter
    one), so they are revoked.
    """
    token_hash = _hash(token)
    invitation = session.scalar(select(Invitation).where(Invitation.token_hash == token_hash))
    if invitation is None:
        raise NotFound("Invitation not found: check the link, or ask for a new invitation.")
    account = session.get(Account, invitation.account_id)
    member = session.get(User, invitation.user_id)
    if account is None or member is None:
        raise NotFound("Invitation not found.")
    check_access(account)
    email = member.email
    # Team changes of one account go one at a time, and joining withdraws the address's
    # invitations elsewhere: this account and those are locked first, all in id order
    # like `withdraw_invitations` (two acceptances of one address, or an acceptance and
    # a registration, lock the same accounts in the same order: no deadlock).
    locked = sorted({account.id, *invited_in(session, email)})
    for account_id in locked:
        lock_account(session, account_id)
    holder = address_holder(session, email, other_than=member.id)
    if holder is not None:
        # Registered, or accepted in another account, meanwhile: one mailbox, one login.
        raise _claimed(email)
    claimed = session.execute(
        update(Invitation)
        .where(
            Invitation.id == invitation.id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > now,
        )
        .values(accepted_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not claimed:
        # As committed now: a removal, or a registration of the member's address, that
        # went first deleted it (and the member).
        current = session.get(Invitation, invitation.id, populate_existing=True)
        if current is None:
            raise NotFound("Invitation not found: ask the account's admin for a new one.")
        raise _why_not(current)
    user = session.get(User, invitation.user_id, populate_existing=True)
    if user is None:  # pragma: no cover - removal and registration delete its invitations
        raise NotFound("Invitation not found.")
    user.password_hash = hash_password(password)
    user.joined_at = user.joined_at or now
    user.token_version += 1
    if name:
        user.name = name
    try:
        with session.begin_nested():  # the unique indexes over joined users back the check
            session.flush()
    except IntegrityError:
        raise _claimed(email) from None
    session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    _, key = create_api_key(session, user.account_id, user.id, f"{user.email} (joined)")
    record_event(session, user.account_id, "member_joined", user_id=user.id)
    withdraw_invitations(session, email, now, reason="joined_another_account", locked=locked)
    return Joined(user=user, api_key=key)


def change_role(session: Session, account_id: str, actor: User, user_id: str, role: str) -> User:
    """Only over members below you, only to roles you may grant; their login tokens end."""
    acting = acting_role(session, account_id, actor, "manage_team")
    user = _member(session, account_id, user_id)
    require_outranks(acting, user.role, "the role")
    require_can_grant(acting, role)
    if user.role == role:
        return user
    previous = user.role
    user.role = role
    user.token_version += 1
    session.flush()
    _event(session, account_id, "role_changed", actor, user, previous=previous, role=role)
    return user


def remove_member(
    session: Session, account_id: str, actor: User, user_id: str, now: datetime
) -> Removal:
    """The member goes: their keys are revoked and their login tokens stop at once (the
    user row is deleted), and the seat is free. Jobs and usage stay with the account."""
    role = acting_role(session, account_id, actor, "manage_team")
    user = _member(session, account_id, user_id)
    require_outranks(role, user.role, "the membership")
    _event(session, account_id, "member_removed", actor, user, role=user.role, email=user.email)
    revoked = delete_user(session, user, now)
    return Removal(user=user, keys_revoked=revoked)


def transfer_ownership(
    session: Session, account_id: str, actor: User, user_id: str
) -> tuple[User, User]:
    """The owner hands the account to a member who has joined (so the new owner can log
    in); the old owner becomes an admin. Returns (new owner, old owner)."""
    acting_role(session, account_id, actor, "transfer_ownership")
    user = _member(session, account_id, user_id)
    if user.id == actor.id:
        raise Conflict("You already own this account: name another member.")
    if user.joined_at is None:
        raise Conflict(
            f"{user.email} has not accepted the invitation yet; ownership goes only to a "
            "member who can log in.",
            reason="not_joined",
        )
    for member, role in ((actor, "admin"), (user, "owner")):
        member.role = role
        member.token_version += 1
    session.flush()
    _event(session, account_id, "ownership_transferred", actor, user)
    return user, actor


def invitation_view(invitation: Invitation, token: str | None = None) -> dict[str, object]:
    view: dict[str, object] = {
        "id": invitation.id,
        "user_id": invitation.user_id,
        "expires_at": as_utc(invitation.expires_at).isoformat(),
    }
    if token is not None:
        view["token"] = token
    return view


def _new_invitation(
    session: Session, user: User, now: datetime, ttl: timedelta
) -> tuple[Invitation, str]:
    session.execute(
        update(Invitation)
        .where(
            Invitation.user_id == user.id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    token = INVITATION_PREFIX + secrets.token_urlsafe(32)
    invitation = Invitation(
        account_id=user.account_id,
        user_id=user.id,
        token_hash=_hash(token),
        expires_at=now + ttl,
    )
    session.add(invitation)
    session.flush()
    return invitation, token


def _refuse_taken_address(session: Session, account_id: str, email: str) -> None:
    """409 when the address has a login (here or elsewhere) or is invited here already;
    an invitation pending in another account is no reason."""
    here = session.scalar(select(User).where(same_mailbox(email), User.account_id == account_id))
    if here is not None and here.joined_at is None:
        raise EmailTaken(
            f"{here.email} is already invited to this team: reissue the invitation "
            f"(POST /v1/team/{here.id}/invitation) instead.",
            field="email", reason="already_invited", user_id=here.id,
        )  # fmt: skip
    if here is not None:
        raise EmailTaken(
            f"{here.email} is already a member of this team.",
            field="email", reason="already_member", user_id=here.id,
        )  # fmt: skip
    if address_holder(session, email) is not None:
        raise EmailTaken(
            "An account with this email already exists: this address logs in to another "
            "team (one mailbox, one login), so it cannot be invited. Addresses that differ "
            "only in case, or for providers that ignore them in dots or a +tag, are the "
            "same mailbox.",
            field="email", reason="joined_elsewhere",
        )  # fmt: skip


def _claimed(email: str) -> EmailTaken:
    return EmailTaken(
        f"{email} has joined another team or registered an account meanwhile (one mailbox, "
        "one login); this invitation can no longer be accepted.",
        reason="email_claimed",
    )


def _why_not(invitation: Invitation) -> Exception:
    if invitation.accepted_at is not None:
        return InvitationUsed("This invitation was already used; log in with your password.")
    if invitation.revoked_at is not None:
        return InvitationGone("This invitation was replaced by a newer one; use the latest.")
    return InvitationGone(
        "This invitation has expired; ask the account's admin to send a new one.",
        expired_at=as_utc(invitation.expires_at).isoformat(),
    )


def _member(session: Session, account_id: str, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None or user.account_id != account_id:
        raise NotFound(f"Team member {user_id!r} not found.")
    return user


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _event(
    session: Session, account_id: str, type_: str, actor: User, user: User, **data: str
) -> None:
    record_event(session, account_id, type_, by=actor.id, user_id=user.id, **data)
