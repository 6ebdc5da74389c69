"""Liveness that means something: the database and the broker both answer."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint
from sqlalchemy import text

from models.db import get_engine
from settings import get_settings

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    checks = {"database": "ok", "broker": "ok"}
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = "unavailable"
    try:
        client = redis.Redis.from_url(get_settings().broker_url, socket_timeout=2)
        client.ping()
        client.close()
    except Exception:
        checks["broker"] = "unavailable"
    healthy = all(v == "ok" for v in checks.values())
    return {"status": "ok" if healthy else "unavailable", **checks}, 200 if healthy else 503
