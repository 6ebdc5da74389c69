"""Engine and session setup, the same code on SQLite and PostgreSQL (SQLite's own
settings, writer lock and checkpoints: models/sqlite.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

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
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


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
