"""Accounts: registration seeds credits through the ledger, API keys are stored hashed,
and every status and plan check happens on the API-key path too."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, NamedTuple

import pytest
from sqlalchemy import func, select, update

from billing import accounts, ledger, team
from billing.audit import audit
from billing.errors import (
    AccountInactive,
    EmailTaken,
    InvalidInput,
    NotFound,
    SubscriptionRequired,
)
from models import (
    Account,
    AccountEvent,
    ApiKey,
    Base,
    CreditTransaction,
    Invitation,
    Plan,
    User,
    as_utc,
    utcnow,
)
from models.db import transaction
from tests.factories import catalog_restored, make_account, make_job

PASSWORD = "correct horse battery"
SECRET = "test-secret"


@pytest.fixture
def restore_catalog(db_url: str) -> Iterator[None]:
    with catalog_restored(db_url):
        yield


def register(session: Any, email: str = "Owner@Example.com ") -> accounts.Registration:
    return accounts.register(session, email, PASSWORD, "Owner", 14)


def registered(url: str, email: str = "owner@example.com") -> tuple[str, str]:
    """(account_id, api_key) of a fresh registration."""
    with transaction(url) as session:
        result = register(session, email)
        return result.account.id, result.api_key


def set_status(url: str, account_id: str, status: str) -> None:
    with transaction(url) as session:
        session.execute(update(Account).where(Account.id == account_id).values(status=status))


# --- registration ------------------------------------------------------------------------


def test_register_seeds_the_plan_credits_with_one_registration_transaction(db_url: str) -> None:
    before = utcnow()
    with transaction(db_url) as session:
        result = register(session)
        account_id = result.account.id

    with transaction(db_url) as session:
        acct = session.get(Account, account_id)
        assert acct is not None
        assert acct.plan is not None
        assert acct.plan.slug == "free-trial"
        assert acct.status == "trial"
        assert (acct.credits, acct.reserved_credits) == (2000, 0)
        assert acct.trial_ends_at is not None
        trial_end = as_utc(acct.trial_ends_at)
        assert before + timedelta(days=14) <= trial_end <= utcnow() + timedelta(days=14)
        txns = list(
            session.scalars(
                select(CreditTransaction).where(CreditTransaction.account_id == account_id)
            )
        )
        assert [(t.type, t.amount, t.balance_after) for t in txns] == [("registration", 2000, 2000)]
        user = session.scalar(select(User).where(User.account_id == account_id))
        assert user is not None
        assert (user.email, user.role) == ("owner@example.com", "owner")
        assert user.password_hash != PASSWORD
        assert accounts.verify_password(PASSWORD, user.password_hash)
        assert not accounts.verify_password("wrong", user.password_hash)
        assert audit(session) == []


def test_register_falls_back_to_the_free_plan(db_url: str, restore_catalog: None) -> None:
    with transaction(db_url) as session:
        session.execute(update(Plan).where(Plan.slug == "free-trial").values(is_active=False))
        result = register(session)
        assert result.account.plan.slug == "free"
        assert result.account.credits == 2000


@pytest.mark.parametrize("again", ["owner@example.com", "  OWNER@example.COM  "])
def test_duplicate_email_is_refused_and_writes_nothing(db_url: str, again: str) -> None:
    registered(db_url, "owner@example.com")

    with pytest.raises(EmailTaken) as refused, transaction(db_url) as session:
        register(session, again)
    assert refused.value.code == "email_taken"
    assert refused.value.details == {"field": "email"}

    with transaction(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 1
        assert session.scalar(select(func.count()).select_from(User)) == 1
        assert session.scalar(select(func.count()).select_from(CreditTransaction)) == 1


# --- an invitation reserves no address ---------------------------------------------------


class Invited(NamedTuple):
    account_id: str
    member_id: str
    token: str


def invited(url: str, email: str, inviter: str = "inviter@example.com") -> Invited:
    """An account (enterprise plan) whose owner invited `email`; nobody accepted yet."""
    with transaction(url) as session:
        owner = register(session, inviter)
        accounts.admin_update(session, owner.account.id, None, "enterprise")
        made = team.invite_member(
            session, owner.account, owner.user, email, "editor", "",
            now=utcnow(), ttl=timedelta(hours=72),
        )  # fmt: skip
        return Invited(owner.account.id, made.user.id, made.token)


def members(url: str, account_id: str) -> list[str]:
    with transaction(url) as session:
        query = select(User.email).where(User.account_id == account_id)
        return list(session.scalars(query.order_by(User.created_at)))


@pytest.mark.parametrize(
    ("invited_as", "registered_as"),
    [("ceo@bigcorp.com", " CEO@BigCorp.com"), ("c.e.o+team@gmail.com", "ceo@googlemail.com")],
)
def test_registering_an_invited_address_withdraws_the_pending_invitation(
    db_url: str, invited_as: str, registered_as: str
) -> None:
    """Anyone may invite any address: the invitation must not keep the mailbox's owner
    from registering. The pending member goes, with its invitation and a revoked key, in
    the registration's transaction (compared by normalised email)."""
    invite = invited(db_url, invited_as)
    with transaction(db_url) as session:  # a key made and revoked before: it stays listed
        key = accounts.create_api_key(session, invite.account_id, invite.member_id, "old")[0]
        key.revoked_at = utcnow()
        key_id = key.id

    with transaction(db_url) as session:
        result = register(session, registered_as)
        owner_id = result.user.id

    assert members(db_url, invite.account_id) == ["inviter@example.com"]
    with transaction(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Invitation)) == 0
        key = session.get(ApiKey, key_id)
        assert key is not None
        assert (key.revoked_at is not None, key.user_id) == (True, None)
        event = session.scalars(
            select(AccountEvent).where(
                AccountEvent.account_id == invite.account_id,
                AccountEvent.type == "invitation_withdrawn",
            )
        ).one()
        assert event.data["user_id"] == invite.member_id
        assert event.data["reason"] == "email_registered"
        owner = session.get(User, owner_id)
        assert owner is not None
        assert (owner.role, owner.joined_at is not None) == ("owner", True)
    with pytest.raises(NotFound), transaction(db_url) as session:
        team.accept_invitation(session, invite.token, "a long password", None, utcnow())
    with transaction(db_url) as session:
        assert audit(session) == []


def test_a_member_who_joined_keeps_the_address(db_url: str) -> None:
    invite = invited(db_url, "ed@example.com")
    with transaction(db_url) as session:
        team.accept_invitation(session, invite.token, "a long password", None, utcnow())

    with pytest.raises(EmailTaken), transaction(db_url) as session:
        register(session, "Ed@example.com")

    assert members(db_url, invite.account_id) == ["inviter@example.com", "ed@example.com"]
    with transaction(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 1


def test_a_member_from_before_invitations_with_a_live_key_keeps_the_address(
    db_url: str,
) -> None:
    """Members made before invitations existed have no `joined_at` but were handed keys,
    which may be in use: registering their address must not delete them (409)."""
    invite = invited(db_url, "legacy@example.com")
    with transaction(db_url) as session:
        member = session.scalar(select(User).where(User.email == "legacy@example.com"))
        assert member is not None
        assert member.joined_at is None
        accounts.create_api_key(session, invite.account_id, member.id, "integration")

    with pytest.raises(EmailTaken), transaction(db_url) as session:
        register(session, "legacy@example.com")

    assert members(db_url, invite.account_id) == ["inviter@example.com", "legacy@example.com"]


def test_a_registration_and_an_acceptance_at_once_leave_one_owner_of_the_address(
    db_url: str,
) -> None:
    """Both at once: exactly one wins, the other is refused (a 409: one mailbox, one
    login; or the acceptance a 404 when the registration had withdrawn the invitation
    before it was read), and nothing is half written."""
    invite = invited(db_url, "race@example.com")
    barrier = threading.Barrier(2)

    def accept() -> str:
        barrier.wait(30)
        with transaction(db_url) as session:
            team.accept_invitation(session, invite.token, "a long password", None, utcnow())
        return "joined"

    def sign_up() -> str:
        barrier.wait(30)
        with transaction(db_url) as session:
            register(session, "race@example.com")
        return "registered"

    def outcome(attempt: Any) -> str:
        try:
            return str(attempt())
        except (EmailTaken, NotFound) as refused:
            return type(refused).__name__

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(outcome, [accept, sign_up]))

    assert outcomes in (
        ["EmailTaken", "joined"],
        ["EmailTaken", "registered"],
        ["NotFound", "registered"],
    )
    with transaction(db_url) as session:
        holders = session.execute(
            select(User.account_id, User.role, User.joined_at.is_not(None)).where(
                User.email_normalized == "race@example.com"
            )
        ).all()
        accounts_made = session.scalar(select(func.count()).select_from(Account))
        invitations = session.scalar(select(func.count()).select_from(Invitation))
        assert audit(session) == []
    assert len(holders) == 1
    if "joined" in outcomes:
        assert tuple(holders[0]) == (invite.account_id, "editor", True)
        assert (accounts_made, invitations) == (1, 1)
    else:
        assert holders[0][0] != invite.account_id
        assert tuple(holders[0])[1:] == ("owner", True)
        assert (accounts_made, invitations) == (2, 0)


# PostgreSQL only: SQLite's one writer runs the two transactions one after the other.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_acceptance_committed_before_the_registration_locks_keeps_the_address(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acceptance commits between the registration finding the pending member and
    locking its account: the member re-read under the lock has joined, so it stays and
    the registration is refused, leaving nothing behind."""
    invite = invited(db_url, "both@example.com")
    lock_account = accounts.lock_account

    def accepted_first(session: Any, locked_id: str) -> Any:
        monkeypatch.setattr(accounts, "lock_account", lock_account)
        with transaction(db_url) as other:
            team.accept_invitation(other, invite.token, "a long password", None, utcnow())
        return lock_account(session, locked_id)

    monkeypatch.setattr(accounts, "lock_account", accepted_first)
    with pytest.raises(EmailTaken), transaction(db_url) as session:
        register(session, "both@example.com")

    with transaction(db_url) as session:
        member = session.get(User, invite.member_id)
        assert member is not None
        assert member.joined_at is not None
        assert session.scalar(select(func.count()).select_from(Account)) == 1
        assert audit(session) == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_registration_committed_before_the_acceptance_locks_wins(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registration commits between the acceptance reading the invitation and locking
    the account: the address was claimed meanwhile, a 409 (not a 500, not a 404 for a
    link that was good a moment ago, not a second holder)."""
    invite = invited(db_url, "both@example.com")
    lock_account = team.lock_account

    def registered_first(session: Any, locked_id: str) -> Any:
        monkeypatch.setattr(team, "lock_account", lock_account)
        with transaction(db_url) as other:
            register(other, "both@example.com")
        return lock_account(session, locked_id)

    monkeypatch.setattr(team, "lock_account", registered_first)
    with pytest.raises(EmailTaken) as refused, transaction(db_url) as session:
        team.accept_invitation(session, invite.token, "a long password", None, utcnow())
    assert refused.value.details["reason"] == "email_claimed"

    assert members(db_url, invite.account_id) == ["inviter@example.com"]
    with transaction(db_url) as session:
        roles = session.scalars(select(User.role).where(User.email == "both@example.com"))
        assert list(roles) == ["owner"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_invitation_committed_after_the_withdrawal_looked_cannot_be_accepted(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invitation of the address commits after the registration's withdrawal found
    nothing: a pending member holds nothing, so the registration goes through; the late
    invitation stays (no lock is taken out of order to chase it) and its acceptance is a
    409 that writes nothing."""
    with transaction(db_url) as session:
        inviter = register(session, "inviter@example.com")
        accounts.admin_update(session, inviter.account.id, None, "enterprise")
    withdraw = accounts.withdraw_invitations

    def invited_meanwhile(session: Any, email: str, now: Any) -> list[User]:
        monkeypatch.setattr(accounts, "withdraw_invitations", withdraw)
        withdrawn = withdraw(session, email, now)
        with transaction(db_url) as other:
            actor = other.get(User, inviter.user.id)
            account = other.get(Account, inviter.account.id)
            assert actor is not None
            assert account is not None
            team.invite_member(
                other, account, actor, "late@example.com", "viewer", "",
                now=utcnow(), ttl=timedelta(hours=1),
            )  # fmt: skip
        return withdrawn

    monkeypatch.setattr(accounts, "withdraw_invitations", invited_meanwhile)
    with transaction(db_url) as session:
        register(session, "late@example.com")

    assert members(db_url, inviter.account.id) == ["inviter@example.com", "late@example.com"]
    with transaction(db_url) as session:
        token = team.reissue_invitation(
            session, inviter.account.id, inviter.user, late_member(session, inviter),
            now=utcnow(), ttl=timedelta(hours=1),
        )[1]  # fmt: skip
    with pytest.raises(EmailTaken) as refused, transaction(db_url) as session:
        team.accept_invitation(session, token, "a long password", None, utcnow())
    assert refused.value.details["reason"] == "email_claimed"
    with transaction(db_url) as session:
        joined = session.scalars(
            select(User.role).where(User.email == "late@example.com", User.joined_at.is_not(None))
        ).all()
        assert joined == ["owner"]
        assert audit(session) == []


def late_member(session: Any, inviter: Any) -> str:
    return str(
        session.scalar(
            select(User.id).where(
                User.account_id == inviter.account.id, User.email == "late@example.com"
            )
        )
    )


# --- API keys ----------------------------------------------------------------------------


def test_api_key_is_stored_only_as_its_hash(db_url: str) -> None:
    account_id, key = registered(db_url)
    assert key.startswith(accounts.API_KEY_PREFIX)
    assert len(key) > 40

    with transaction(db_url) as session:
        stored = session.scalar(select(ApiKey).where(ApiKey.account_id == account_id))
        assert stored is not None
        assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key.startswith(stored.prefix)
        assert len(stored.prefix) < len(key) // 2
        # No column of any row of any table holds the key itself.
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                assert all(key not in str(value) for value in row), table.name


def authenticate(session: Any, bearer: str) -> tuple[Account, User]:
    caller = accounts.authenticate(session, bearer, SECRET, 3600)
    return caller.account, caller.user


def test_authenticate_with_an_api_key_returns_the_account_and_user(db_url: str) -> None:
    account_id, key = registered(db_url)
    with transaction(db_url) as session:
        acct, user = authenticate(session, key)
        assert acct.id == account_id
        assert user.email == "owner@example.com"
        for wrong in (key + "x", key[:-1], "", accounts.hash_api_key(key)):
            with pytest.raises(NotFound):
                authenticate(session, wrong)


def test_a_revoked_key_is_refused_and_other_keys_still_work(db_url: str) -> None:
    account_id, key = registered(db_url)
    with transaction(db_url) as session:
        owner = session.scalar(select(User).where(User.account_id == account_id))
        _, second = accounts.create_api_key(session, account_id, owner.id, "ci")
        first = session.scalar(select(ApiKey).where(ApiKey.key_hash == accounts.hash_api_key(key)))
        accounts.revoke_api_key(session, account_id, owner, first.id)
    with transaction(db_url) as session:
        with pytest.raises(NotFound):
            authenticate(session, key)
        assert authenticate(session, second)[0].id == account_id


def test_login_token_is_the_second_auth_path(db_url: str) -> None:
    account_id, _ = registered(db_url)
    with transaction(db_url) as session:
        user, token = accounts.login(session, " OWNER@example.com", PASSWORD, SECRET)
        assert user.account_id == account_id
        assert authenticate(session, token)[0].id == account_id
        with pytest.raises(NotFound):
            accounts.login(session, "owner@example.com", "wrong password", SECRET)
        with pytest.raises(NotFound):
            accounts.authenticate(session, token, "another secret", 3600)


def test_an_unknown_email_costs_one_password_check_like_a_known_one(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping scrypt for unknown emails would let response time reveal who has an
    account: both paths verify once, with the same scrypt parameters."""
    registered(db_url)
    checked: list[str] = []
    verify = accounts.verify_password

    def counting(password: str, stored: str) -> bool:
        checked.append(stored)
        return verify(password, stored)

    monkeypatch.setattr(accounts, "verify_password", counting)
    with transaction(db_url) as session:
        with pytest.raises(NotFound, match="Wrong email or password"):
            accounts.login(session, "owner@example.com", "wrong password", SECRET)
        for _ in range(2):
            with pytest.raises(NotFound, match="Wrong email or password"):
                accounts.login(session, "nobody@example.com", PASSWORD, SECRET)
        owner_hash = session.scalar(select(User.password_hash))

    assert len(checked) == 3
    assert checked[0] == owner_hash
    assert checked[1] == checked[2] != owner_hash  # one dummy hash, made once
    assert checked[1].startswith("scrypt$")


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
def test_inactive_accounts_are_refused_on_every_auth_path(db_url: str, status: str) -> None:
    account_id, key = registered(db_url)
    with transaction(db_url) as session:
        _, token = accounts.login(session, "owner@example.com", PASSWORD, SECRET)
    set_status(db_url, account_id, status)
    with transaction(db_url) as session:
        for bearer in (key, token):
            with pytest.raises(AccountInactive) as refused:
                authenticate(session, bearer)
            assert refused.value.code == f"account_{status}"
            assert refused.value.details == {"status": status}
        with pytest.raises(AccountInactive):
            accounts.login(session, "owner@example.com", PASSWORD, SECRET)
        with pytest.raises(AccountInactive):
            accounts.check_access(session.get(Account, account_id))


@pytest.mark.parametrize("status", ["trial", "active", "pending_payment"])
def test_spending_statuses_may_authenticate(db_url: str, status: str) -> None:
    account_id, key = registered(db_url)
    set_status(db_url, account_id, status)
    with transaction(db_url) as session:
        assert authenticate(session, key)[0].status == status


def test_an_inactive_plan_requires_a_subscription(db_url: str, restore_catalog: None) -> None:
    _, key = registered(db_url)
    with transaction(db_url) as session:
        session.execute(update(Plan).where(Plan.slug == "free-trial").values(is_active=False))
    with transaction(db_url) as session:
        with pytest.raises(SubscriptionRequired) as refused:
            authenticate(session, key)
        assert refused.value.code == "subscription_required"


def test_an_account_without_a_plan_requires_a_subscription(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug=None)
        with pytest.raises(SubscriptionRequired):
            accounts.check_access(acct)


# --- admin changes and views -------------------------------------------------------------


def test_admin_plan_change_keeps_balance_and_holds(db_url: str) -> None:
    account_id, _ = registered(db_url)
    with transaction(db_url) as session:
        job = make_job(session, session.get(Account, account_id))
        ledger.reserve(session, account_id, job.id, 500, timedelta(minutes=5))
    with transaction(db_url) as session:
        acct = accounts.admin_update(session, account_id, "active", "growth")
        assert (acct.status, acct.plan.slug) == ("active", "growth")
        assert accounts.credits_view(acct) == {"balance": 2000, "reserved": 500, "available": 1500}
        view = accounts.account_view(session, acct)
        assert view["plan"]["slug"] == "growth"
        assert view["credits"]["available"] == 1500
        assert view["limits"]["sites"] == {"used": 0, "limit": 5}


@pytest.mark.parametrize(
    ("status", "plan", "refusal"), [("frozen", None, InvalidInput), (None, "platinum", NotFound)]
)
def test_admin_update_rejects_unknown_values(
    db_url: str, status: Any, plan: Any, refusal: type[Exception]
) -> None:
    """An unknown status is bad input (422); an unknown plan is a missing resource (404)."""
    account_id, _ = registered(db_url)
    with pytest.raises(refusal), transaction(db_url) as session:
        accounts.admin_update(session, account_id, status, plan)
    with transaction(db_url) as session:
        acct = session.get(Account, account_id)
        assert (acct.status, acct.plan.slug) == ("trial", "free-trial")


def test_admin_update_of_a_missing_account_is_not_found(db_url: str) -> None:
    with pytest.raises(NotFound), transaction(db_url) as session:
        accounts.admin_update(session, "acc_missing", "active", None)


def test_every_status_move_writes_its_event_once(db_url: str) -> None:
    """Admin changes go through the one conditional move, with an event, like the
    lifecycle's; a move to the status it already has writes nothing."""
    with transaction(db_url) as session:
        account_id = make_account(session, status="trial").id
    with transaction(db_url) as session:
        assert accounts.admin_update(session, account_id, "suspended", None).status == "suspended"
        assert accounts.admin_update(session, account_id, "suspended", None).status == "suspended"
        assert not accounts.move_status(session, account_id, "active", "x", expected="trial")
    with transaction(db_url) as session:
        moves = session.scalars(
            select(AccountEvent.data).where(
                AccountEvent.account_id == account_id, AccountEvent.type == "status_changed"
            )
        ).all()
        assert session.get(Account, account_id).status == "suspended"
    assert moves == [{"from": "trial", "to": "suspended", "reason": "admin"}]
