"""Per-account model choice per operation, within what the plan allows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.schemas import AISettingsOut, OperationName, responds
from api.security import current_account, require_key, require_role
from api.validation import json_body
from billing import policy
from billing.operations import get_operation

if TYPE_CHECKING:
    from api.openapi import DocumentBuilder

bp = Blueprint("ai_settings", __name__, url_prefix="/v1/ai-settings")


class PreferenceBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"operation": "content_generation", "model": "gpt-4o"}]},
    )

    operation: OperationName
    model: str = Field(
        min_length=1,
        max_length=100,
        description="A model of the operation's type that your plan allows.",
    )

    @classmethod
    def openapi_schema(cls, builder: DocumentBuilder) -> dict[str, Any]:
        """One variant per operation: `model` is one of that operation's type."""
        return builder.per_operation(cls)


@bp.get("")
@responds(AISettingsOut)
@require_key
def get_settings() -> dict[str, Any]:
    """Per operation: the model jobs run on now, your preference and the choices."""
    return {"operations": policy.settings_view(db(), current_account())}


@bp.put("")
@responds(AISettingsOut)
@require_key
@require_role("manage_settings")
@json_body(PreferenceBody)
def set_preference(body: PreferenceBody) -> dict[str, Any]:
    session = db()
    policy.set_preference(session, current_account(), get_operation(body.operation), body.model)
    return {"operations": policy.settings_view(session, current_account())}
