"""Admin: the provider's rate limits per model, changed at runtime for every worker.

The env settings (PROVIDER_RPM, PROVIDER_TPM, PROVIDER_MODEL_LIMITS) are the defaults;
an override set here wins until it is deleted (workers/ratelimit.py).
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.schemas import ProviderLimitOut, ProviderLimitsOut, responds
from api.security import require_admin
from api.validation import json_body
from settings import get_settings
from workers import ratelimit

bp = Blueprint("provider_limits", __name__, url_prefix="/v1/admin/provider-limits")
MODEL_NAME_MAX = 100


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    rpm: int = Field(ge=0, le=10_000_000, description="requests per window; 0 = no limit")
    tpm: int = Field(ge=0, le=10_000_000_000, description="tokens per window; 0 = no limit")


def _view(model: str, limits: ratelimit.Limits, source: str) -> dict[str, Any]:
    return {"model": model, "rpm": limits.rpm, "tpm": limits.tpm, "source": source}


def _redis_down(exc: redis.RedisError) -> ApiError:
    return ApiError(503, "unavailable", f"The rate limiter's Redis is unavailable: {exc}")


@bp.get("")
@responds(ProviderLimitsOut)
@require_admin
def list_limits() -> dict[str, Any]:
    """The provider's limits per model: env defaults and runtime overrides."""
    settings = get_settings()
    try:
        overrides = ratelimit.overrides()
    except redis.RedisError as exc:
        raise _redis_down(exc) from exc
    env = ratelimit.parse_model_limits(settings.provider_model_limits)
    return {
        "window_seconds": settings.provider_rate_window_seconds,
        "default": {"rpm": settings.provider_rpm, "tpm": settings.provider_tpm},
        "data": [_view(m, limits, "env") for m, limits in env.items() if m not in overrides]
        + [_view(m, limits, "override") for m, limits in overrides.items()],
    }


def _check(model: str) -> None:
    if len(model) > MODEL_NAME_MAX:
        raise ApiError(422, "invalid_request", "Model name too long.", fields={"model": "<= 100"})


@bp.put("/<model>")
@responds(ProviderLimitOut)
@require_admin
@json_body(LimitsBody)
def set_limits(model: str, body: LimitsBody) -> dict[str, Any]:
    """Override a model's limits for every worker, now."""
    _check(model)
    limits = ratelimit.Limits(body.rpm, body.tpm)
    try:
        ratelimit.set_override(model, limits)
    except redis.RedisError as exc:
        raise _redis_down(exc) from exc
    return _view(model, limits, "override")


@bp.delete("/<model>")
@responds(None, 204, errors=(422,))  # a model name over 100 characters
@require_admin
def delete_limits(model: str) -> tuple[str, int]:
    """Back to the env's limits for the model."""
    _check(model)
    try:
        ratelimit.set_override(model, None)
    except redis.RedisError as exc:
        raise _redis_down(exc) from exc
    return "", 204
