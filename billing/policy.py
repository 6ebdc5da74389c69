"""Which model a job runs on: the plan decides, the account's settings choose within it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import InvalidInput, ModelNotAllowed
from billing.operations import OPERATIONS, Operation
from models import Account, AIModelConfig, AISettings, Plan


def _active_models(session: Session, model_type: str) -> list[AIModelConfig]:
    return list(
        session.scalars(
            select(AIModelConfig)
            .where(AIModelConfig.model_type == model_type, AIModelConfig.is_active)
            .order_by(AIModelConfig.name)
        )
    )


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


def resolve_model(
    session: Session, account: Account, operation: Operation, requested: str | None
) -> AIModelConfig:
    """The model a job runs on. One read of the active models (two with a preference to
    look up): this runs on every submission."""
    active = _active_models(session, operation.model_type)
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
    setting = session.scalar(
        select(AISettings).where(
            AISettings.account_id == account.id, AISettings.operation == operation.name
        )
    )
    if setting is None:
        session.add(AISettings(account_id=account.id, operation=operation.name, model_name=model))
    else:
        setting.model_name = model
    session.flush()


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
