"""Seeding writes exactly what billing/catalog.py says, unlimited (None) limits included,
on a fresh database and again on a seeded one, on every backend."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from billing import catalog, plans
from models import Plan
from models.db import transaction
from tests.models.test_migrations import alembic_config
from tests.models.test_migrations import empty_url as empty_url  # the fixture

FIELDS = [name for name in plans.PlanFields.model_fields if name != "billing_cycle"]


def shipped(values: dict[str, Any]) -> dict[str, Any]:
    """A catalog entry as a row should hold it: unnamed fields take PlanFields' defaults."""
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in plans.PlanFields.model_fields.items()
        if not field.is_required()
    }
    return {name: values.get(name, defaults.get(name)) for name in FIELDS}


def seeded(url: str) -> dict[str, dict[str, Any]]:
    with transaction(url) as session:
        rows = session.scalars(select(Plan)).all()
        return {p.slug: {name: getattr(p, name) for name in FIELDS} for p in rows}


def test_a_fresh_database_is_seeded_with_the_catalog(database_url: str) -> None:
    """`database_url` is migrated and seeded once per session: a fresh database."""
    rows = seeded(database_url)
    for values in catalog.PLANS:
        assert rows[values["slug"]] == shipped(values), values["slug"]
    assert rows["scale"]["max_sites"] is None
    assert rows["enterprise"]["max_keywords"] is None


def test_seeding_twice_changes_nothing(empty_url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(empty_url), "head")
    for _ in range(2):
        with transaction(empty_url) as session:
            catalog.seed(session)
        rows = seeded(empty_url)
        assert {slug: rows[slug] for slug in rows} == {v["slug"]: shipped(v) for v in catalog.PLANS}


def test_an_admin_plan_with_unlimited_sites_stays_unlimited(db_url: str) -> None:
    with transaction(db_url) as session:
        plan = plans.create_plan(
            session, {"slug": "agency", "name": "Agency", "price": "99", "max_sites": None}
        )
        plan_id = plan.id
    with transaction(db_url) as session:
        stored = session.get(Plan, plan_id)
        assert stored is not None
        assert (stored.max_sites, stored.max_users, stored.max_keywords) == (None, 1, 100)


def test_seeding_keeps_what_an_admin_changed_in_a_plan(db_url: str) -> None:
    """`ops seed` runs on every start (`make run`, docker-compose's `migrate`): a plan an
    admin retired, or whose concurrency they raised, stays so; the fields they left alone
    still take the catalog's values (how a new column gets its shipped value)."""
    with transaction(db_url) as session:
        plans.update_plan(session, "growth", {"is_active": False, "max_concurrent_jobs": 12})
        session.execute(update(Plan).where(Plan.slug == "growth").values(extra_credit_price=None))
    with transaction(db_url) as session:
        catalog.seed(session)
    growth = seeded(db_url)["growth"]
    assert (growth["is_active"], growth["max_concurrent_jobs"]) == (False, 12)
    assert growth["extra_credit_price"] == Decimal("0.004")

    with transaction(db_url) as session:
        catalog.seed(session, reset=True)
    growth = seeded(db_url)["growth"]
    assert (growth["is_active"], growth["max_concurrent_jobs"]) == (True, 10)
    with transaction(db_url) as session:
        catalog.seed(session)
    assert seeded(db_url)["growth"]["max_concurrent_jobs"] == 10
