"""Liveness that means something: the database and the broker both answer.

A 503 names what is down (`{"database": "ok", "broker": "unavailable", "error": ...}`),
and each probe is bounded by a short timeout so a dead dependency cannot stall it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import redis
from flask import Blueprint
from sqlalchemy import Engine, text

from api.schemas import HealthOut, responds
from models.db import get_engine
from settings import get_settings

bp = Blueprint("health", __name__)
PROBE_TIMEOUT_SECONDS = 2
_probe_lock = threading.Lock()
_probe: tuple[Engine, Future[None]] | None = None


@bp.get("/healthz")
@responds(HealthOut)
def healthz() -> tuple[dict[str, Any], int]:
    """The database and the broker both answer (503 names what is down)."""
    settings = get_settings()
    checks = {"database": "ok", "broker": "ok"}
    checks["database"] = _database_status(get_engine())
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


def _database_status(engine: Engine) -> str:
    """The database answers `SELECT 1` within PROBE_TIMEOUT_SECONDS. The probe runs in
    its own thread, the one place a deadline covers all of it (the pool checkout, the
    connect, the query) whatever the driver does, and at most one runs at a time per
    process: callers arriving while it is in flight share its answer, so a hung server
    pins one thread, not one per /healthz request."""
    global _probe
    with _probe_lock:
        if _probe is None or _probe[0] is not engine or _probe[1].done():
            probe: Future[None] = Future()
            threading.Thread(
                target=_probe_database, args=(engine, probe), name="healthz-db", daemon=True
            ).start()
            _probe = (engine, probe)
        probe = _probe[1]
    try:
        probe.result(timeout=PROBE_TIMEOUT_SECONDS)
    except Exception:
        return "unavailable"
    return "ok"


def _probe_database(engine: Engine, probe: Future[None]) -> None:
    """On SQLite a deferred read (no wait for the writer lock); on PostgreSQL a server-side
    statement_timeout too, so a backend stuck on the query frees the probe's thread."""
    probe.set_running_or_notify_cancel()
    try:
        reader = engine.execution_options(sqlite_begin="DEFERRED")
        with reader.connect() as connection:
            if engine.dialect.name == "postgresql":
                milliseconds = PROBE_TIMEOUT_SECONDS * 1000
                connection.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
            connection.execute(text("SELECT 1"))
    except BaseException as exc:
        probe.set_exception(exc)
    else:
        probe.set_result(None)
