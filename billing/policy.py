"""Which model a job runs on: the plan decides, the account's settings choose within it.

Every submission needs the active models and their prices. They are read once per
process and kept while the catalog's version stamp (models/catalog_version.py, set by
the database on any change to plans or prices) is the one they were read at, for at most
`PRICE_LIST_SECONDS`: the stamp rides on the API-key read each request makes anyway, so
an admin's change counts from the very next request in every process, and a cached
request reads no price at all. The plan itself comes with the account row (fresh).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billing.errors import InvalidInput, ModelNotAllowed
from billing.operations import OPERATIONS, Operation
from models import CATALOG_VERSION, Account, AIModelConfig, AISettings, Plan

# A backstop only: a changed stamp reloads at once.
PRICE_LIST_SECONDS = 30.0


@dataclass(frozen=True)
class _PriceList:
    """The active models by type, name order, as read at `version`. Shared by every
    thread: detached, fully loaded rows that nothing writes to or adds to a session."""

    version: int | None
    read_at: float
    models: dict[str, tuple[AIModelConfig, ...]]


@dataclass(frozen=True)
class Seen:
    """What the request's API-key read saw for the policy (billing.accounts.authenticate),
    so it is not read again: the catalog's version stamp (None: unknown), and whether the
    account has any model preference (most have none: no lookup then)."""

    catalog_version: int | None
    has_preferences: bool = True


# Per database (tests use two in one process); replaced whole, never changed in place.
_cache: dict[str, _PriceList] = {}


def _price_list(session: Session, version: int | None) -> _PriceList:
    """The cached price list if it was read at the current stamp (`version`: as read in
    this transaction; None: read it now), else a fresh read that becomes the cache."""
    if version is None:
        version = session.scalar(select(CATALOG_VERSION))
    database = str(session.get_bind().engine.url)
    cached = _cache.get(database)
    now = time.monotonic()
    if (
        cached is not None
        and version is not None
        and cached.version == version
        and now - cached.read_at < PRICE_LIST_SECONDS
    ):
        return cached
    # A session of its own on the request's connection (same transaction, same
    # snapshot): closing it detaches the rows from everything the caller holds.
    with Session(bind=session.connection()) as reader:
        rows = reader.scalars(
            select(AIModelConfig).where(AIModelConfig.is_active).order_by(AIModelConfig.name)
        ).all()
    by_type: dict[str, tuple[AIModelConfig, ...]] = {
        kind: tuple(row for row in rows if row.model_type == kind) for kind in ("text", "image")
    }
    # Tagged with the stamp read before the rows: the rows are at least that new, so a
    # later change is never mistaken for this one.
    fresh = _PriceList(version, now, by_type)
    if version is not None:
        _cache[database] = fresh
    return fresh


def forget_price_list() -> None:
    """Drop this process's copy (tests that rewrite the catalog behind the stamp)."""
    _cache.clear()


def _active_models(
    session: Session, model_type: str, version: int | None = None
) -> list[AIModelConfig]:
    return list(_price_list(session, version).models.get(model_type, ()))


def _default_of(active: list[AIModelConfig], model_type: str) -> AIModelConfig:
    for model in active:
        if model.is_default:
            return model
    raise LookupError(f"no active default {model_type} model is configured (run `seed`)")


def active_model_names(session: Session) -> dict[str, list[str]]:
    """Active model names by model type: what a job's `model` may name (the plan then
    decides which of them it allows)."""
    names: dict[str, list[str]] = {}
    for model_type, name in session.execute(
        select(AIModelConfig.model_type, AIModelConfig.name)
        .where(AIModelConfig.is_active)
        .order_by(AIModelConfig.name)
    ):
        names.setdefault(model_type, []).append(name)
    return names


def default_model(session: Session, model_type: str) -> AIModelConfig:
    return _default_of(_active_models(session, model_type), model_type)


def _allowed(active: list[AIModelConfig], plan: Plan | None, model_type: str) -> list[str]:
    names = [model.name for model in active]
    if plan is None:
        return names
    if plan.force_default_models:
        return [_default_of(active, model_type).name]
    listed = plan.allowed_text_models if model_type == "text" else plan.allowed_image_models
    return [name for name in names if not listed or name in listed]


def allowed_model_names(session: Session, plan: Plan | None, model_type: str) -> list[str]:
    return _allowed(_active_models(session, model_type), plan, model_type)


def may_run(
    session: Session,
    plan: Plan | None,
    operation: Operation,
    model: str,
    catalog_version: int | None = None,
) -> bool:
    """Whether a job submitted on `model` may still run for `operation` on `plan` now: what
    `resolve_model` allows an explicit model (the plan's policy, among the active models).
    The plan may change and a model be switched off while a job waits, and its hold was
    priced for that model, so the worker asks again before the provider call.
    `catalog_version`: the stamp as read in this transaction (a warm price list then costs
    no statement; None: read here)."""
    active = _active_models(session, operation.model_type, catalog_version)
    return model in _allowed(active, plan, operation.model_type)


def resolve_model(
    session: Session,
    account: Account,
    operation: Operation,
    requested: str | None,
    seen: Seen | None = None,
) -> AIModelConfig:
    """The model a job runs on; this runs on every submission. `seen`: what this
    transaction's API-key read saw (none: read here). With the price list cached and no
    preference to look up, no statement at all."""
    seen = seen or Seen(None)
    active = _active_models(session, operation.model_type, seen.catalog_version)
    by_name = {model.name: model for model in active}
    allowed = _allowed(active, account.plan, operation.model_type)
    if requested is not None:
        if requested not in allowed:
            known = session.get(AIModelConfig, requested)
            if known is None or known.model_type != operation.model_type:
                raise InvalidInput(
                    f"Unknown {operation.model_type} model {requested!r}.",
                    fields={"model": f"one of {', '.join(allowed) or 'none'}"},
                )
            raise ModelNotAllowed(
                f"Your plan does not allow {requested!r} for {operation.name}. "
                f"Allowed: {', '.join(allowed)}.",
                model=requested,
                allowed=allowed,
            )
        return by_name[requested]
    preferred = None
    if seen.has_preferences:
        preferred = session.scalar(
            select(AISettings.model_name).where(
                AISettings.account_id == account.id, AISettings.operation == operation.name
            )
        )
    if preferred in allowed:
        return by_name[preferred]
    default = _default_of(active, operation.model_type)
    if default.name in allowed:
        return default
    if not allowed:
        raise ModelNotAllowed(f"Your plan allows no {operation.model_type} model.", allowed=[])
    return by_name[allowed[0]]


def set_preference(session: Session, account: Account, operation: Operation, model: str) -> None:
    """Remember the account's model for an operation; only a model the plan allows."""
    allowed = allowed_model_names(session, account.plan, operation.model_type)
    if model not in allowed:
        resolve_model(session, account, operation, model)  # raises the precise refusal
    # One upsert: two first choices at once would otherwise both insert, and the later
    # one fail on the unique (account, operation) on PostgreSQL.
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(AISettings).values(
        account_id=account.id, operation=operation.name, model_name=model
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[AISettings.account_id, AISettings.operation],
            set_={"model_name": statement.excluded.model_name},
        )
    )


def settings_view(session: Session, account: Account) -> dict[str, Any]:
    """Per operation: the model a job would run on now, the preference, the choices."""
    preferred = {
        s.operation: s.model_name
        for s in session.scalars(select(AISettings).where(AISettings.account_id == account.id))
    }
    return {
        name: {
            "model": resolve_model(session, account, op, None).name,
            "preferred": preferred.get(name),
            "allowed": allowed_model_names(session, account.plan, op.model_type),
            "forced": bool(account.plan and account.plan.force_default_models),
        }
        for name, op in OPERATIONS.items()
    }
