"""Team changes in billing: the hierarchy helpers, and two changes racing on one account."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import permissions, team
from billing.accounts import create_api_key, hash_password, revoke_api_key
from billing.errors import Forbidden, InvalidInput, NotFound
from billing.limits import Locked
from models import Account, ApiKey, User, utcnow
from models.db import transaction
from tests.factories import make_account


def test_ranks_follow_the_roles_and_a_keyless_member_ranks_lowest() -> None:
    ranks = [permissions.rank(role) for role in ("viewer", "editor", "admin", "owner")]
    assert ranks == sorted(ranks)
    assert permissions.rank(None) < permissions.rank("viewer")
    permissions.require_outranks("admin", None, "the API keys")  # a removed member's key
    with pytest.raises(Forbidden):
        permissions.require_outranks("admin", "admin", "the role")


@pytest.mark.parametrize(
    ("role", "new_role", "error"),
    [
        ("admin", "viewer", None),
        ("admin", "editor", None),
        ("admin", "admin", Forbidden),
        ("owner", "admin", None),
        ("owner", "owner", InvalidInput),
        ("owner", "superuser", InvalidInput),
    ],
)
def test_who_may_grant_which_role(role: str, new_role: str, error: type[Exception] | None) -> None:
    if error is None:
        permissions.require_can_grant(role, new_role)
    else:
        with pytest.raises(error):
            permissions.require_can_grant(role, new_role)


def _members(account_id: str, *roles: str) -> list[str]:
    with transaction() as session:
        users = [
            User(
                account_id=account_id,
                email=f"{role}{i}@example.com",
                role=role,
                password_hash=hash_password("correct horse"),
                joined_at=utcnow(),
            )
            for i, role in enumerate(roles)
        ]
        session.add_all(users)
        session.flush()
        return [u.id for u in users]


def test_two_transfers_at_once_leave_exactly_one_owner(db_url: str) -> None:
    """The owner's two requests race to hand the account to two admins: the account lock
    lets one through; the other finds its sender is no longer the owner."""
    with transaction() as session:
        account_id = make_account(session, "enterprise").id
    owner, first, second = _members(account_id, "owner", "admin", "admin")
    barrier = threading.Barrier(2)

    def transfer(target: str) -> str:
        barrier.wait(30)
        try:
            with transaction() as session:
                actor = session.get(User, owner)
                assert actor is not None
                team.transfer_ownership(session, account_id, actor, target)
        except Forbidden:
            return "refused"
        return "moved"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(transfer, [first, second]))

    assert outcomes == ["moved", "refused"]
    with transaction() as session:
        roles = {uid: role for uid, role in session.execute(select(User.id, User.role))}
    assert roles[owner] == "admin"
    assert sorted([roles[first], roles[second]]) == ["admin", "owner"]


def test_an_admin_demoted_meanwhile_cannot_act_on_what_the_old_role_allowed(db_url: str) -> None:
    """The actor's role is re-read under the account lock, not taken from the request's
    start: a demotion committed in between counts."""
    with transaction() as session:
        account_id = make_account(session, "enterprise").id
    owner, admin, editor = _members(account_id, "owner", "admin", "editor")
    with transaction() as session:
        stale_admin = session.get(User, admin)  # loaded as admin, like a request's caller
    assert stale_admin is not None
    with transaction() as session:
        actor = session.get(User, owner)
        assert actor is not None
        team.change_role(session, account_id, actor, admin, "viewer")
    with transaction() as session, pytest.raises(Forbidden):
        team.remove_member(session, account_id, stale_admin, editor, utcnow())
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 3


def test_an_invitation_is_accepted_once_even_when_raced(db_url: str) -> None:
    with transaction() as session:
        account_id = make_account(session, "enterprise").id
    (owner_id,) = _members(account_id, "owner")
    with transaction() as session:
        account = session.get(Account, account_id)
        owner = session.get(User, owner_id)
        assert account is not None
        assert owner is not None
        made = team.invite_member(
            session, account, owner, "new@example.com", "editor", "",
            now=utcnow(), ttl=timedelta(hours=1),
        )  # fmt: skip
    barrier = threading.Barrier(2)

    def accept(password: str) -> str:
        barrier.wait(30)
        try:
            with transaction() as session:
                team.accept_invitation(session, made.token, password, None, utcnow())
        except Exception as exc:  # the loser's refusal, whatever its type
            return type(exc).__name__
        return "joined"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(accept, ["first password", "second password"]))

    assert outcomes == ["InvitationUsed", "joined"]


def test_an_admin_demoted_to_editor_meanwhile_manages_nobody(db_url: str) -> None:
    """Editors outrank viewers but manage neither the team nor keys: the least role the
    action needs is re-checked against the role read under the lock, not only the rank
    over the target (the request's `require_role` saw the role before the demotion)."""
    with transaction() as session:
        account_id = make_account(session, "enterprise").id
    owner, admin, viewer = _members(account_id, "owner", "admin", "viewer")
    with transaction() as session:
        stale_admin = session.get(User, admin)  # loaded as admin, like a request's caller
        viewer_key = create_api_key(session, account_id, viewer, "viewer's")[0].id
    assert stale_admin is not None
    with transaction() as session:
        actor = session.get(User, owner)
        assert actor is not None
        team.change_role(session, account_id, actor, admin, "editor")

    attempts = [
        lambda session: team.remove_member(session, account_id, stale_admin, viewer, utcnow()),
        lambda session: team.reissue_invitation(
            session, account_id, stale_admin, viewer, now=utcnow(), ttl=timedelta(hours=1)
        ),
        lambda session: revoke_api_key(session, account_id, stale_admin, viewer_key),
    ]
    for attempt in attempts:
        with transaction() as session, pytest.raises(Forbidden):
            attempt(session)

    with transaction() as session:
        assert session.get(User, viewer) is not None
        key = session.get(ApiKey, viewer_key)
        assert key is not None
        assert key.revoked_at is None


# PostgreSQL only: SQLite's one writer runs the two transactions one after the other.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_invitation_whose_member_is_removed_meanwhile_is_not_found(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal commits between the acceptance reading the invitation and taking the
    account lock (it deletes the member's invitations): the answer is a 404, not a 500
    from refreshing a row that is gone."""
    with transaction() as session:
        account_id = make_account(session, "enterprise").id
    (owner_id,) = _members(account_id, "owner")
    with transaction() as session:
        account = session.get(Account, account_id)
        owner = session.get(User, owner_id)
        assert account is not None
        assert owner is not None
        made = team.invite_member(
            session, account, owner, "new@example.com", "editor", "",
            now=utcnow(), ttl=timedelta(hours=1),
        )  # fmt: skip
        member_id = made.user.id
    lock_account = team.lock_account

    def removed_first(session: Session, locked_id: str) -> Locked:
        monkeypatch.setattr(team, "lock_account", lock_account)
        with transaction() as other:
            actor = other.get(User, owner_id)
            assert actor is not None
            team.remove_member(other, account_id, actor, member_id, utcnow())
        return lock_account(session, locked_id)

    monkeypatch.setattr(team, "lock_account", removed_first)
    with transaction() as session, pytest.raises(NotFound):
        team.accept_invitation(session, made.token, "a long password", None, utcnow())
