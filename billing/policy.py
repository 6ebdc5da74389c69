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


def default_model(session: Session, model_type: str) -> AIModelConfig:
    model = session.scalar(
        select(AIModelConfig).where(
            AIModelConfig.model_type == model_type,
            AIModelConfig.is_default,
            AIModelConfig.is_active,
        )
    )
    if model is None:
        raise LookupError(f"no active default {model_type} model is configured (run `seed`)")
    return model


def allowed_model_names(session: Session, plan: Plan | None, model_type: str) -> list[str]:
    active = [m.name for m in _active_models(session, model_type)]
    if plan is None:
        return active
    if plan.force_default_models:
        return [default_model(session, model_type).name]
    listed = plan.allowed_text_models if model_type == "text" else plan.allowed_image_models
    return [name for name in active if not listed or name in listed]


def resolve_model(
    session: Session, account: Account, operation: Operation, requested: str | None
) -> AIModelConfig:
    allowed = allowed_model_names(session, account.plan, operation.model_type)
    if requested is not None:
        if requested not in allowed:
            known = session.get(AIModelConfig, requested)
            if known is None or known.model_type != operation.model_type:
                raise InvalidInput(
                    f"Unknown {operation.model_type} model {requested!r}.",
                    fields={"model": f"must be one of {allowed}"},
                )
            raise ModelNotAllowed(
                f"Your plan does not allow {requested!r} for {operation.name}. "
                f"Allowed: {', '.join(allowed)}.",
                model=requested,
                allowed=allowed,
            )
        return _get(session, requested)
    preferred = session.scalar(
        select(AISettings.model_name).where(
            AISettings.account_id == account.id, AISettings.operation == operation.name
        )
    )
    if preferred in allowed:
        return _get(session, preferred)
    default = default_model(session, operation.model_type)
    if default.name in allowed:
        return default
    if not allowed:
        raise ModelNotAllowed(f"Your plan allows no {operation.model_type} model.", allowed=[])
    return _get(session, allowed[0])


def _get(session: Session, name: str | None) -> AIModelConfig:
    model = session.get(AIModelConfig, name) if name else None
    if model is None:
        raise LookupError(f"model {name!r} vanished from the price list")
    return model


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
