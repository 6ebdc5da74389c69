"""The PostgreSQL engine's pool: connections in steady use are not pinged; one idle past
PING_AFTER_IDLE_SECONDS is, and a dead one is replaced before the caller sees it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

import models.db
from models.db import make_engine
from ops.postgres_server import PostgresServer

PID = text("select pg_backend_pid()")


@pytest.fixture(scope="module")
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.create_database("aijobs_pool")


@pytest.fixture
def engine(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    monkeypatch.setattr(models.db, "PING_AFTER_IDLE_SECONDS", 0.3)
    made = make_engine(pg_url)
    yield made
    made.dispose()


def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the engine's pings from now on."""
    counted: list[int] = []
    original = engine.dialect.do_ping

    def do_ping(dbapi: Any) -> bool:
        counted.append(1)
        return original(dbapi)

    monkeypatch.setattr(engine.dialect, "do_ping", do_ping)
    return counted


def pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(PID) or 0)


def terminate(pg_url: str, backend: int) -> None:
    killer = create_engine(pg_url)
    with killer.connect() as connection:
        connection.execute(text("select pg_terminate_backend(:pid)"), {"pid": backend})
    killer.dispose()


def test_a_connection_in_steady_use_is_not_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = pings(engine, monkeypatch)
    backends = {pid(engine) for _ in range(20)}
    assert len(backends) == 1  # the same pooled connection every time
    assert counted == []


def test_an_idle_connection_killed_by_the_server_is_replaced_unseen(
    engine: Engine, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pid(engine)
    terminate(pg_url, first)
    counted = pings(engine, monkeypatch)
    time.sleep(0.4)  # idle past PING_AFTER_IDLE_SECONDS

    second = pid(engine)

    assert counted == [1]
    assert second != first


def test_without_the_ping_the_caller_would_see_the_dead_connection(pg_url: str) -> None:
    """The scenario above is real: a plain pool hands out the killed connection."""
    plain = create_engine(pg_url, pool_size=1)
    try:
        first = pid(plain)
        terminate(pg_url, first)
        with pytest.raises(OperationalError):
            pid(plain)
    finally:
        plain.dispose()
