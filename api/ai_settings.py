"""Per-account model choice per operation, within what the plan allows."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import current_account, require_key, require_role
from api.validation import json_body
from billing import policy
from billing.operations import get_operation

bp = Blueprint("ai_settings", __name__, url_prefix="/v1/ai-settings")


class PreferenceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    operation: str
    model: str = Field(min_length=1, max_length=100)


@bp.get("")
@require_key
def get_settings() -> dict[str, Any]:
    return {"operations": policy.settings_view(db(), current_account())}


@bp.put("")
@require_key
@require_role("manage_settings")
@json_body(PreferenceBody)
def set_preference(body: PreferenceBody) -> dict[str, Any]:
    session = db()
    policy.set_preference(session, current_account(), get_operation(body.operation), body.model)
    return {"operations": policy.settings_view(session, current_account())}
