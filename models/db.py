"""Engine and session setup, the same code on SQLite and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE`: a read-then-write transaction that began deferred can fail with
"database is locked" without waiting, whatever the busy timeout says.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_read_factories: dict[str, sessionmaker[Session]] = {}


def database_url() -> str:
    from settings import get_settings

    return get_settings().database_url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _make_sqlite_engine(url)
    from settings import get_settings

    # Sized for a threads-pool worker: each thread holds a connection only for its short
    # transactions, never across a provider call (DB_POOL_SIZE, DB_MAX_OVERFLOW).
    settings = get_settings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def _make_sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level so SQLAlchemy's BEGIN below is the only BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    writer = _ProcessWriter()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Readers may ask for DEFERRED: in WAL mode they then never wait for writers.
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode != "IMMEDIATE":
            connection.exec_driver_sql(f"BEGIN {mode}")
            return
        writer.acquire(connection)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release(connection)
            raise

    # The transaction's end is written here too, so the process's writer slot is given
    # up only once SQLite's lock is (the driver's own commit() then finds no transaction).
    @event.listens_for(engine, "commit")
    def _on_commit(connection: Any) -> None:
        if writer.holds(connection):
            connection.exec_driver_sql("COMMIT")
            writer.release(connection)

    @event.listens_for(engine, "rollback")
    def _on_rollback(connection: Any) -> None:
        if writer.holds(connection):
            try:
                connection.exec_driver_sql("ROLLBACK")
            finally:
                writer.release(connection)

    return engine


class _ProcessWriter:
    """One SQLite writer at a time per process, queued on a lock.

    SQLite lets one transaction write at a time; a `BEGIN IMMEDIATE` that finds the lock
    taken polls, sleeping 1, 2, 5, 10 ... up to 100 ms between tries, so under load
    threads of one process overslept each other's short transactions by tens of
    milliseconds (p99 over a second for 8 threads submitting jobs). Here they wait on a
    lock that wakes the next one at once; SQLite's own busy wait remains between
    processes. Waiting past the busy timeout fails as SQLite would ("database is locked").
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, connection: Any) -> None:
        if not self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        connection.info[_WRITER] = True

    def holds(self, connection: Any) -> bool:
        return bool(connection.info.get(_WRITER))

    def release(self, connection: Any) -> None:
        if connection.info.pop(_WRITER, False):
            self._lock.release()


_WRITER = "aijobs_process_writer"


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
