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
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text, update
from sqlalchemy.pool import NullPool

from billing import catalog
from models import Base, Purchase
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
        command.upgrade(config, "head")
    assert current_revision(empty_url) == "0012"

    with transaction(empty_url) as session:
        session.execute(
            update(Purchase)
            .where(Purchase.id == select(func.min(Purchase.id)).scalar_subquery())
            .values(payment_reference="BANK-9-checked")
        )
    command.upgrade(config, "head")
    assert current_revision(empty_url) == "0013"
