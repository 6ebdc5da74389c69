"""Engine and session setup, the same code on SQLite and PostgreSQL (SQLite's own
settings, writer lock and checkpoints: models/sqlite.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from models.sqlite import make_sqlite_engine

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_read_factories: dict[str, sessionmaker[Session]] = {}


def database_url() -> str:
    from settings import get_settings

    return get_settings().database_url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return make_sqlite_engine(url)
    from settings import get_settings

    # Sized for a threads-pool worker: each thread holds a connection only for its short
    # transactions, never across a provider call (DB_POOL_SIZE, DB_MAX_OVERFLOW).
    settings = get_settings()
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        connect_args=_connect_args(url, settings.db_connect_timeout_seconds),
    )
    _ping_after_idle(engine)
    return engine


# Idle 30 s, then a probe every 10 s, 3 unanswered: a peer gone without a FIN (a dead
# host, a dropped NAT entry) fails the connection in about a minute, not hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}  # fmt: skip


def _connect_args(url: str, connect_timeout: int) -> dict[str, Any]:
    """libpq waits for a server that accepts and never answers (a hung postmaster, a
    black-holed proxy) for psycopg's default of 130 s, holding the caller's thread and a
    pool slot; bound it. Parameters in the URL's query win over these defaults."""
    given = make_url(url).query
    wanted = {"connect_timeout": connect_timeout, **KEEPALIVES}
    return {name: value for name, value in wanted.items() if name not in given}


# A pooled connection checked in this recently was working a moment ago; one idle for
# longer may have been closed by the server (a restart, an idle timeout, a proxy).
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_after_idle(engine: Engine) -> None:
    """SQLAlchemy's `pool_pre_ping`, for idle connections only: it pinged on every
    checkout, a round trip per request (~0.1 ms of CPU and more of waiting, measured in
    bench.admission_cpu) where connections are in steady use. A dead connection found
    here is replaced by the pool (DisconnectionError), so the request never sees it."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi, None):
                raise DisconnectionError(str(exc)) from exc
            raise


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process (re-created after fork by `dispose_engines`)."""
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
            _factories[url] = sessionmaker(engine, expire_on_commit=False)
            reader = engine.execution_options(sqlite_begin="DEFERRED")
            _read_factories[url] = sessionmaker(reader, expire_on_commit=False)
        return engine


def session_factory(url: str | None = None, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions whose transactions take SQLite's write lock up front, or, for
    `read_only` work, a deferred transaction that does not block writers."""
    url = url or database_url()
    get_engine(url)
    return (_read_factories if read_only else _factories)[url]


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception."""
    with session_factory(url)() as session, session.begin():
        yield session


@contextmanager
def snapshot(url: str | None = None) -> Iterator[Session]:
    """A read-only transaction that sees one moment of the whole database, for checks
    that read many tables (the audit): under PostgreSQL's default READ COMMITTED each
    statement would see the commits made between them, and a grant landing between the
    sum of transactions and the balances reads as a violation. SQLite's deferred read
    transaction is a snapshot already (WAL) and blocks no writer."""
    with session_factory(url, read_only=True)() as session:
        if not is_sqlite(url):
            session.connection(
                execution_options={
                    "isolation_level": "REPEATABLE READ",
                    "postgresql_readonly": True,
                }
            )
        try:
            yield session
        finally:
            session.rollback()


def dispose_engines() -> None:
    """Drop pooled connections; called in each forked worker process."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()
        _factories.clear()
        _read_factories.clear()


def is_sqlite(url: str | None = None) -> bool:
    return (url or database_url()).startswith("sqlite")
