"""The PostgreSQL engine's pool: connections in steady use are not pinged; one idle past
PING_AFTER_IDLE_SECONDS is, and a dead one is replaced before the caller sees it. A server
that accepts and never answers fails a connect within DB_CONNECT_TIMEOUT_SECONDS."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
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


@contextmanager
def silent_listener() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts the TCP connection and never says a word
    (a hung postmaster, a black-holed proxy): the kernel completes the handshake."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        port = server.getsockname()[1]
        yield f"postgresql+psycopg://aijobs@127.0.0.1:{port}/aijobs"


def within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run `call` in a thread: the exception it raised, None if it returned, and a
    failed test (not a hung one) if it is still waiting after `seconds`."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds:g}s"
    return outcome[0]


def test_a_connect_to_a_server_that_never_answers_fails_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "2")  # libpq's minimum
    with silent_listener() as url:
        hung = make_engine(url)
        try:
            started = time.monotonic()
            error = within(8, hung.connect)
            assert isinstance(error, OperationalError)
            assert time.monotonic() - started < 4.5
        finally:
            hung.dispose()


def test_the_engine_asks_for_tcp_keepalives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server gone without a FIN (a dead host, a dropped NAT entry) is noticed by the
    kernel instead of hanging a query until the OS gives up (hours)."""
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "7")
    seen: list[dict[str, Any]] = []
    engine = make_engine("postgresql+psycopg://aijobs@127.0.0.1:1/aijobs")
    event.listen(engine, "do_connect", lambda _d, _r, _a, kwargs: seen.append(kwargs))
    try:
        with pytest.raises(OperationalError):
            engine.connect()
    finally:
        engine.dispose()
    assert seen[0]["connect_timeout"] == 7
    assert seen[0]["keepalives"] == 1
