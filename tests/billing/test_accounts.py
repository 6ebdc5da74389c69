"""Accounts: registration seeds credits through the ledger, API keys are stored hashed,
and every status and plan check happens on the API-key path too."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from billing import accounts, ledger
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
