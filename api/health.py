"""Liveness that means something: the database and the broker both answer.

A 503 names what is down (`{"database": "ok", "broker": "unavailable", "error": ...}`),
and each probe is bounded by a short timeout so a dead dependency cannot stall it.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint
from sqlalchemy import text

from api.schemas import HealthOut, responds
from models.db import get_engine
from settings import get_settings

bp = Blueprint("health", __name__)
PROBE_TIMEOUT_SECONDS = 2


@bp.get("/healthz")
@responds(HealthOut)
def healthz() -> tuple[dict[str, Any], int]:
    """The database and the broker both answer (503 names what is down)."""
    settings = get_settings()
    checks = {"database": "ok", "broker": "ok"}
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = "unavailable"
    checks["broker"] = _redis_status(settings.broker_url)
    if settings.redis_url != settings.broker_url:
        checks["redis"] = _redis_status(settings.redis_url)
    down = [name for name, status in checks.items() if status != "ok"]
    if not down:
        return {"status": "ok", **checks}, 200
    error = {
        "code": "dependency_unavailable",
        "message": f"Unavailable: {', '.join(down)}.",
        "unavailable": down,
    }
    return {"status": "unavailable", **checks, "error": error}, 503


def _redis_status(url: str) -> str:
    client = redis.Redis.from_url(
        url, socket_timeout=PROBE_TIMEOUT_SECONDS, socket_connect_timeout=PROBE_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except (redis.RedisError, OSError):
        return "unavailable"
    finally:
        client.close()
    return "ok"
