"""Team changes in billing: the hierarchy helpers, and two changes racing on one account."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import permissions, team
from billing.accounts import create_api_key, hash_password, login, revoke_api_key
from billing.audit import audit
from billing.emails import normalize_email
from billing.errors import EmailTaken, Forbidden, InvalidInput, NotFound
from billing.limits import Locked
from models import Account, AccountEvent, ApiKey, Invitation, User, utcnow
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


# --- an invitation reserves no address ----------------------------------------------------


def _team(email: str) -> tuple[str, str]:
    """An account (enterprise) and its owner: (account id, owner id)."""
    with transaction() as session:
        account_id = make_account(session, "enterprise").id
    with transaction() as session:
        owner = User(
            account_id=account_id,
            email=email,
            email_normalized=normalize_email(email),
            role="owner",
            password_hash=hash_password("correct horse"),
            joined_at=utcnow(),
        )
        session.add(owner)
        session.flush()
        return account_id, owner.id


def _invite(team_: tuple[str, str], email: str) -> team.Invite:
    with transaction() as session:
        account = session.get(Account, team_[0])
        owner = session.get(User, team_[1])
        assert account is not None
        assert owner is not None
        return team.invite_member(
            session, account, owner, email, "editor", "", now=utcnow(), ttl=timedelta(hours=1)
        )


def test_an_address_pending_in_one_account_is_invited_by_another_and_joins_it(
    db_url: str,
) -> None:
    """Account A invited x first; B can still invite x (by another spelling of the same
    mailbox), and x joining B withdraws A's invitation, recorded in A's events."""
    first, second = _team("a@example.com"), _team("b@example.com")
    squatted = _invite(first, "c.e.o+x@gmail.com")

    real = _invite(second, "ceo@googlemail.com")

    with transaction() as session:
        joined = team.accept_invitation(session, real.token, "a long password", None, utcnow())
        assert joined.user.account_id == second[0]
    with transaction() as session:
        assert session.get(User, squatted.user.id) is None
        assert session.scalars(select(Invitation.user_id)).all() == [real.user.id]
        event = session.scalars(
            select(AccountEvent).where(AccountEvent.type == "invitation_withdrawn")
        ).one()
        assert event.account_id == first[0]
        assert event.data["user_id"] == squatted.user.id
        assert event.data["reason"] == "joined_another_account"
    with transaction() as session, pytest.raises(NotFound):
        team.accept_invitation(session, squatted.token, "a long password", None, utcnow())
    with transaction() as session:
        assert audit(session) == []


@pytest.mark.parametrize(
    ("invited_as", "reason"),
    [
        ("x@example.com", "already_invited"),
        ("X@Example.com", "already_invited"),
        ("joined@example.com", "already_member"),
        ("b@example.com", "joined_elsewhere"),
    ],
)
def test_an_address_taken_for_this_team_is_refused_with_its_reason(
    db_url: str, invited_as: str, reason: str
) -> None:
    first, _ = _team("a@example.com"), _team("b@example.com")
    pending = _invite(first, "x@example.com")
    member = _invite(first, "joined@example.com")
    with transaction() as session:
        team.accept_invitation(session, member.token, "a long password", None, utcnow())

    with pytest.raises(EmailTaken) as refused:
        _invite(first, invited_as)

    assert refused.value.details["reason"] == reason
    if reason == "already_invited":
        assert refused.value.details["user_id"] == pending.user.id
        assert "reissue" in refused.value.message
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 4


def test_login_finds_the_user_who_joined_not_a_pending_row_of_the_address(db_url: str) -> None:
    """Several rows may share an address (pending ones elsewhere): login takes the one
    with a password, whichever was made first."""
    first, second = _team("a@example.com"), _team("b@example.com")
    with transaction() as session:  # a pending row made first, as a late invitation leaves
        session.add(
            User(
                account_id=first[0],
                email="x@example.com",
                email_normalized="x@example.com",
                role="viewer",
                password_hash=hash_password("a long password"),
            )
        )
    member = _invite(second, "x@example.com")
    with transaction() as session:
        team.accept_invitation(session, member.token, "a long password", None, utcnow())

    with transaction() as session:
        user, _ = login(session, "X@example.com", "a long password", "secret")
        assert (user.id, user.account_id) == (member.user.id, second[0])


def test_a_second_user_who_joins_with_an_address_is_refused_by_the_database(
    db_url: str,
) -> None:
    """The unique indexes over joined users back the checks: a second joined row of one
    mailbox (any spelling), or a second row of it in one account, cannot be written."""
    first, second = _team("a@example.com"), _team("b@example.com")
    rows = [
        (second[0], "A@example.com", utcnow()),  # another spelling, joined elsewhere
        (second[0], "a@example.com", utcnow()),
        (first[0], "a@example.com", None),  # pending, in the account that has it
    ]
    for account_id, email, joined_at in rows:
        with pytest.raises(IntegrityError), transaction() as session:
            session.add(
                User(
                    account_id=account_id,
                    email=email,
                    email_normalized=normalize_email(email),
                    password_hash="-",
                    role="viewer",
                    joined_at=joined_at,
                )
            )


# PostgreSQL only: SQLite's one writer runs the two transactions one after the other.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_acceptances_of_one_address_in_two_accounts_leave_one_user(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both acceptances have read their invitation before either locks anything: each
    locks both accounts, in id order, so one joins and withdraws the other's invitation,
    and the other gets a clean 409 (no deadlock, no second login, nothing half written)."""
    first, second = _team("a@example.com"), _team("b@example.com")
    made = [_invite(first, "x@example.com"), _invite(second, "x@example.com")]
    both_read = threading.Barrier(2)
    waited: set[int] = set()
    lock_account = team.lock_account

    def after_both_read(session: Session, account_id: str) -> Locked:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_read.wait(30)
        return lock_account(session, account_id)

    monkeypatch.setattr(team, "lock_account", after_both_read)

    def accept(token: str) -> str:
        try:
            with transaction() as session:
                team.accept_invitation(session, token, "a long password", None, utcnow())
        except EmailTaken as refused:
            return str(refused.details["reason"])
        return "joined"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(accept, [m.token for m in made]))

    assert outcomes == ["email_claimed", "joined"]
    with transaction() as session:
        users = session.execute(
            select(User.account_id, User.joined_at.is_not(None)).where(
                User.email == "x@example.com"
            )
        ).all()
        assert len(users) == 1
        assert users[0][1] is True
        assert session.scalar(select(func.count()).select_from(Invitation)) == 1
        withdrawn = session.scalars(
            select(AccountEvent.account_id).where(AccountEvent.type == "invitation_withdrawn")
        ).all()
        assert withdrawn == [a for a, _ in (first, second) if a != users[0][0]]
        assert audit(session) == []
