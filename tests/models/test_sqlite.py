"""SQLite engines (models/sqlite.py): one writer at a time across processes, a dead
writer's lock freed by the kernel, a bounded wait, checkpoints in the background."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import models.sqlite
from models.sqlite import WAL_BACKSTOP_PAGES, make_sqlite_engine
from tests.factories import hold_writer_in_process, increments_in_process


@pytest.fixture
def counter(tmp_path: Path) -> str:
    path = str(tmp_path / "counter.db")
    engine = make_sqlite_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (value INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counter VALUES (0)"))
    engine.dispose()
    return path


def _value(path: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT value FROM counter").fetchone()[0])


def test_writers_of_many_processes_never_overlap(counter: str) -> None:
    processes, times = 4, 150
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    children = [
        ctx.Process(target=increments_in_process, args=(counter, times, barrier, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    errors = [error for _ in children for error in results.get(timeout=120)]
    for child in children:
        child.join(30)

    assert errors == []
    assert _value(counter) == processes * times  # no lost update
    assert Path(f"{counter}-writer.lock").exists()


def test_a_writer_that_dies_holding_the_lock_frees_it_and_waits_are_bounded(
    counter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=hold_writer_in_process, args=(counter, ready))
    holder.start()
    try:
        assert ready.wait(60)
        lock_file = os.open(f"{counter}-writer.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):  # the holder's flock, not only SQLite's lock
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(lock_file)
        monkeypatch.setattr(models.sqlite, "SQLITE_BUSY_TIMEOUT_MS", 300)
        engine = make_sqlite_engine(f"sqlite:///{counter}")
        started = time.monotonic()
        with (
            pytest.raises(OperationalError, match="database is locked"),
            engine.begin() as connection,
        ):
            connection.execute(text("UPDATE counter SET value = value + 10"))
        assert time.monotonic() - started < 5

        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        with engine.begin() as connection:  # the kernel dropped the dead holder's flock
            connection.execute(text("UPDATE counter SET value = value + 10"))
        engine.dispose()
    finally:
        if holder.is_alive():
            holder.kill()
    assert _value(counter) == 10  # the dead writer's transaction never committed


def test_checkpoints_run_in_the_background(counter: str) -> None:
    """Committed pages reach the database file without any commit checkpointing (the
    backstop is far above what is written here)."""
    engine = make_sqlite_engine(f"sqlite:///{counter}")
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
    assert pages == WAL_BACKSTOP_PAGES
    for _ in range(50):
        with engine.begin() as connection:
            connection.execute(text("UPDATE counter SET value = value + 1"))

    main_file_only = f"file:{counter}?immutable=1"  # reads the database file, not the WAL
    deadline = time.monotonic() + 10
    value = -1
    while time.monotonic() < deadline:
        with sqlite3.connect(main_file_only, uri=True) as connection:
            value = connection.execute("SELECT value FROM counter").fetchone()[0]
        if value == 50:
            break
        time.sleep(0.2)
    engine.dispose()
    assert value == 50


def test_an_autocommit_read_becomes_a_writing_transaction(counter: str) -> None:
    """`sqlite_begin=AUTOCOMMIT` (the API's caller read) begins nothing, so it never
    waits for the writer; `begin_writing` then takes the lock on the same connection,
    and the transaction's end gives it back."""
    engine = make_sqlite_engine(f"sqlite:///{counter}")
    writer = models.sqlite._writers[engine]
    with engine.connect() as connection:
        reading = connection.execution_options(sqlite_begin=models.sqlite.AUTOCOMMIT)
        with reading.begin():
            assert reading.execute(text("SELECT value FROM counter")).scalar() == 0
            assert not reading.connection.dbapi_connection.in_transaction
            assert not writer.holds(reading)
            models.sqlite.begin_writing(reading)
            assert reading.connection.dbapi_connection.in_transaction
            assert writer.holds(reading)
            reading.execute(text("UPDATE counter SET value = value + 1"))
        assert not writer.holds(reading)
        with reading.begin():  # a caller read that never writes ends with nothing open
            reading.execute(text("SELECT value FROM counter"))
        assert not reading.connection.dbapi_connection.in_transaction
    engine.dispose()
    assert _value(counter) == 1
