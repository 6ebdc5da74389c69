"""Alembic builds exactly the models' schema on an empty database, and tears it down."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, delete, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from billing import catalog
from billing.accounts import address_holder
from billing.emails import normalize_email
from models import ApiKey, Base, Purchase, User, utcnow
from models.db import get_engine, transaction
from tests.factories import make_account

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",")]


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, empty database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        server = request.getfixturevalue("pg_server")
        url = server.create_database(f"migrations_{uuid.uuid4().hex[:12]}")
    yield url
    get_engine(url).dispose()  # env.py migrates through the shared engine: free its connections


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    return config


def schema_diff(url: str) -> list[object]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_head_builds_exactly_the_models(empty_url: str) -> None:
    assert tables(empty_url) == set()

    command.upgrade(alembic_config(empty_url), "head")

    assert schema_diff(empty_url) == []
    assert tables(empty_url) == {*Base.metadata.tables, "alembic_version"}
    head = ScriptDirectory.from_config(alembic_config(empty_url)).get_current_head()
    assert current_revision(empty_url) == head


def test_a_model_change_without_a_migration_is_detected(empty_url: str) -> None:
    """The comparison above is not vacuous: a missing column shows up as a diff."""
    command.upgrade(alembic_config(empty_url), "head")
    engine = create_engine(empty_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_credit_reservations_open"))
    finally:
        engine.dispose()
    added = [
        d[1].name  # type: ignore[index]
        for d in schema_diff(empty_url)
        if isinstance(d, tuple) and d[0] == "add_index"
    ]
    assert added == ["ix_credit_reservations_open"]


def test_downgrade_base_removes_everything_and_upgrade_again_works(empty_url: str) -> None:
    config = alembic_config(empty_url)
    command.upgrade(config, "head")

    command.downgrade(config, "base")

    assert tables(empty_url) <= {"alembic_version"}
    assert current_revision(empty_url) is None
    command.upgrade(config, "head")
    assert schema_diff(empty_url) == []


def test_0013_stops_on_a_payment_that_paid_for_two_purchases(empty_url: str) -> None:
    """The unique index cannot be built over a payment used twice: the upgrade names it
    and changes nothing, and goes through once an operator has sorted it out."""
    config = alembic_config(empty_url)
    command.upgrade(config, "0012")
    with transaction(empty_url) as session:
        catalog.seed(session)
        account = make_account(session, plan_slug="starter")
        for _ in range(2):
            session.add(
                Purchase(
                    account_id=account.id,
                    kind="credits",
                    status="paid",
                    credits=500,
                    amount=Decimal("2.50"),
                    payment_reference="BANK-9",
                )
            )

    with pytest.raises(RuntimeError, match="BANK-9"):
        command.upgrade(config, "0013")
    assert current_revision(empty_url) == "0012"

    with transaction(empty_url) as session:
        session.execute(
            update(Purchase)
            .where(Purchase.id == select(func.min(Purchase.id)).scalar_subquery())
            .values(payment_reference="BANK-9-checked")
        )
    command.upgrade(config, "0013")
    assert current_revision(empty_url) == "0013"


def _user(account_id: str, email: str, role: str = "viewer", **fields: object) -> User:
    return User(
        account_id=account_id,
        email=email,
        email_normalized=fields.pop("email_normalized", normalize_email(email)),
        password_hash="-",
        role=role,
        **fields,
    )


def test_0014_keeps_every_user_and_lets_other_accounts_invite_pending_addresses(
    empty_url: str,
) -> None:
    """Existing users (owners, members who joined, pending ones, a member from before
    invitations with a live key, an old row whose normalised email collided) all fit
    the new indexes. After it another account may invite a pending address, while a
    second joined user of an address, or a second row of it in one account, is refused;
    the downgrade stops while an address has several users."""
    config = alembic_config(empty_url)
    command.upgrade(config, "0013")
    now = utcnow()
    with transaction(empty_url) as session:
        catalog.seed(session)
        first, second = (make_account(session, plan_slug="enterprise").id for _ in range(2))
        session.add_all(
            [
                _user(first, "owner@example.com", "owner", joined_at=now),
                _user(first, "ed@example.com", "editor", joined_at=now),
                _user(first, "x@example.com"),
                _user(first, "a.b@gmail.com", joined_at=now),
                _user(second, "ab@gmail.com", "owner", email_normalized=None, joined_at=now),
                legacy := _user(second, "legacy@example.com"),
            ]
        )
        session.flush()
        session.add(ApiKey(account_id=second, user_id=legacy.id, prefix="aij_x", key_hash="x"))

    command.upgrade(config, "0014")

    assert current_revision(empty_url) == "0014"
    with transaction(empty_url) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 6
        session.add(_user(second, "X@example.com".lower()))  # pending in both accounts now
        holder = address_holder(session, "legacy@example.com")
        assert holder is not None
        assert holder.id == legacy.id
        assert address_holder(session, "x@example.com") is None
    refused = [
        _user(second, "ed@example.com", joined_at=now),  # joined in two accounts
        _user(second, "ab+x@gmail.com", joined_at=now),  # the same mailbox
        _user(first, "x@example.com"),  # twice in one account
    ]
    for row in [*refused, ApiKey(account_id=first, user_id="usr_gone", prefix="p", key_hash="h")]:
        with pytest.raises(IntegrityError), transaction(empty_url) as session:
            session.add(row)  # the last: foreign keys are checked again (SQLite: back on)

    with pytest.raises(RuntimeError, match=r"x@example\.com"):
        command.downgrade(config, "0013")
    with transaction(empty_url) as session:
        session.execute(
            delete(User).where(User.account_id == second, User.email == "x@example.com")
        )
    command.downgrade(config, "0013")
    assert current_revision(empty_url) == "0013"
    command.upgrade(config, "head")
    assert schema_diff(empty_url) == []


def test_0014_that_fails_halfway_changes_nothing(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade is one transaction (on SQLite with foreign keys off, migrations/env.py):
    a failure after the copy of `users` rolls it all back, and they are on again."""
    config = alembic_config(empty_url)
    command.upgrade(config, "0013")
    with transaction(empty_url) as session:
        catalog.seed(session)
        account_id = make_account(session, plan_slug="enterprise").id
        session.add(owner := _user(account_id, "owner@example.com", "owner", joined_at=utcnow()))
        session.flush()
        session.add(ApiKey(account_id=account_id, user_id=owner.id, prefix="p", key_hash="k"))
    create_index = Operations.create_index

    def failing(self: Operations, name: str, *args: object, **kwargs: object) -> object:
        if name == "uq_users_account_email":
            raise RuntimeError("disk full")
        return create_index(self, name, *args, **kwargs)

    monkeypatch.setattr(Operations, "create_index", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        command.upgrade(config, "0014")

    assert current_revision(empty_url) == "0013"
    refused = [
        _user(make_account_id(empty_url), "owner@example.com"),  # email unique again
        ApiKey(account_id=account_id, user_id="usr_gone", prefix="q", key_hash="j"),
    ]
    for row in refused:
        with pytest.raises(IntegrityError), transaction(empty_url) as session:
            session.add(row)
    monkeypatch.setattr(Operations, "create_index", create_index)
    command.upgrade(config, "head")
    assert schema_diff(empty_url) == []


def make_account_id(url: str) -> str:
    with transaction(url) as session:
        return make_account(session, plan_slug="enterprise").id


def test_a_populated_database_from_0005_upgrades_to_head(empty_url: str) -> None:
    """0006 and 0014 copy `users`, which API keys point at: on SQLite, dropping the old
    table with foreign keys on failed ("FOREIGN KEY constraint failed") as soon as one
    key existed. Migrations run with them off and checked once at the end instead."""
    config = alembic_config(empty_url)
    command.upgrade(config, "0005")
    created = "2026-01-01 00:00:00"
    with get_engine(empty_url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO accounts (id, name, status, credits, reserved_credits, "
                "usage_ahrefs_queries, created_at) "
                "VALUES ('acc_old', 'old', 'active', 100, 0, 0, :created)"
            ),
            {"created": created},
        )
        for user_id, email, role in (
            ("usr_o", "o@example.com", "owner"),
            ("usr_a", "a@example.com", "admin"),
        ):
            connection.execute(
                text(
                    "INSERT INTO users (id, account_id, email, name, password_hash, role, "
                    "created_at) VALUES (:id, 'acc_old', :email, '', 'x', :role, :created)"
                ),
                {"id": user_id, "email": email, "role": role, "created": created},
            )
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, account_id, user_id, name, prefix, key_hash, "
                    "created_at) VALUES (:id, 'acc_old', :user_id, 'k', 'aij_', :hash, :created)"
                ),
                {"id": f"key_{user_id}", "user_id": user_id, "hash": user_id, "created": created},
            )

    command.upgrade(config, "head")

    assert current_revision(empty_url) == ScriptDirectory.from_config(config).get_current_head()
    with transaction(empty_url) as session:
        keys = session.execute(select(ApiKey.id, ApiKey.user_id).order_by(ApiKey.id)).all()
        assert [tuple(k) for k in keys] == [("key_usr_a", "usr_a"), ("key_usr_o", "usr_o")]
        holder = address_holder(session, "a@example.com")
        assert holder is not None
        assert holder.id == "usr_a"  # a member from before invitations, with a live key
    with pytest.raises(IntegrityError), transaction(empty_url) as session:
        session.add(ApiKey(account_id="acc_old", user_id="usr_gone", prefix="p", key_hash="h"))
    assert schema_diff(empty_url) == []
