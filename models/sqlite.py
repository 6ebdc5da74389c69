"""SQLite engines: WAL, one writer at a time across threads and processes, checkpoints
off the request path.

Every write transaction starts with `BEGIN IMMEDIATE` (a read-then-write transaction
that began deferred can fail with "database is locked" at once, whatever the busy
timeout says) and takes our writer lock first (`Writer`). Readers may begin DEFERRED:
in WAL mode they never wait for writers. A connection with `sqlite_begin=AUTOCOMMIT`
begins no transaction at all: each statement is its own, until `begin_writing`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The background checkpointer runs this often; a commit checkpoints itself only when the
# WAL passed the backstop (the checkpointer stopped or fell far behind).
CHECKPOINT_EVERY_SECONDS = 1.0
WAL_BACKSTOP_PAGES = 10_000
_WRITER = "aijobs_writer"
# `sqlite_begin` execution option: no BEGIN; the driver runs each statement as its own
# transaction (its isolation_level is None) until `begin_writing`.
AUTOCOMMIT = "AUTOCOMMIT"
_writers: WeakKeyDictionary[Engine, Writer] = WeakKeyDictionary()


def make_sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[-1]
    on_disk = bool(path) and path != ":memory:" and not path.startswith("file:")
    if on_disk:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )
    writer = _writers[engine] = Writer(Path(f"{path}-writer.lock") if on_disk else None)
    checkpointer = Checkpointer(path) if on_disk else None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level so SQLAlchemy's BEGIN below is the only BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if checkpointer is not None:
            cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
            checkpointer.ensure_running()
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode == "IMMEDIATE":
            writer.begin(connection)
        elif mode != AUTOCOMMIT:
            connection.exec_driver_sql(f"BEGIN {mode}")

    # A writing transaction's end is written here too, so the writer lock is given up
    # only once SQLite's is (the driver's own commit() then finds no transaction).
    @event.listens_for(engine, "commit")
    def _on_commit(connection: Any) -> None:
        writer.end(connection, "COMMIT")

    @event.listens_for(engine, "rollback")
    def _on_rollback(connection: Any) -> None:
        writer.end(connection, "ROLLBACK")

    return engine


def begin_writing(connection: Connection) -> None:
    """Turn a reading transaction (DEFERRED, or AUTOCOMMIT: none yet) into a writing
    one, on the same connection and, for SQLAlchemy and the ORM, the same transaction:
    what was read stays loaded, and from here the transaction holds the writer lock.
    The reads came from an earlier snapshot; nothing about money may rely on them (the
    ledger re-checks in SQL)."""
    writer = _writers.get(connection.engine)
    if writer is None or writer.holds(connection):
        return
    mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    if mode == "IMMEDIATE":
        return
    if mode != AUTOCOMMIT:
        connection.exec_driver_sql("COMMIT")
    writer.begin(connection)


def _locked() -> OperationalError:
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))


class Writer:
    """One SQLite writer at a time, queued without SQLite's sleeps.

    A `BEGIN IMMEDIATE` that finds the lock taken polls, sleeping 1, 2, 5, 10 ... up to
    100 ms between tries, so writers overslept each other's short transactions by tens
    of milliseconds (p99 over a second with the API and a worker on one database).
    Threads of a process wait on a lock that wakes the next one at once; processes on an
    flock of `<database>-writer.lock`, retried at most `MAX_POLL_SECONDS` apart, which
    the kernel drops with the process if it dies. Waiting past the busy timeout fails
    as SQLite would ("database is locked").
    """

    MAX_POLL_SECONDS = 0.001

    def __init__(self, lock_path: Path | None) -> None:
        self._thread_lock = threading.Lock()
        self._lock_path = lock_path
        self._fd: int | None = None
        self._pid = 0

    def begin(self, connection: Any) -> None:
        """Take the lock, then SQLite's (`BEGIN IMMEDIATE`)."""
        self.acquire(connection)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.release(connection)
            raise

    def end(self, connection: Any, statement: str) -> None:
        """`COMMIT` or `ROLLBACK` a transaction this writer began, then give the lock up."""
        if not self.holds(connection):
            return
        try:
            connection.exec_driver_sql(statement)
        finally:
            self.release(connection)

    def acquire(self, connection: Any) -> None:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        if not self._thread_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise _locked()
        try:
            if self._lock_path is not None:
                self._lock_file(deadline)
        except BaseException:
            self._thread_lock.release()
            raise
        connection.info[_WRITER] = True

    def holds(self, connection: Any) -> bool:
        return bool(connection.info.get(_WRITER))

    def release(self, connection: Any) -> None:
        if not connection.info.pop(_WRITER, False):
            return
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _lock_file(self, deadline: float) -> None:
        fd = self._file()
        delay = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _locked() from None
                time.sleep(delay)
                delay = min(delay * 2, self.MAX_POLL_SECONDS)

    def _file(self) -> int:
        """This process's own descriptor: a forked child must not share its parent's
        (an flock belongs to the open file, which a fork shares)."""
        assert self._lock_path is not None
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


class Checkpointer:
    """Copies the WAL back into the database file every `CHECKPOINT_EVERY_SECONDS`, in
    a daemon thread of each process that writes (PASSIVE: it waits for no reader or
    writer; concurrent checkpointers skip). A checkpoint syncs both files to disk (~10-20
    ms on the 2-core machine): SQLite's own, every 1,000 pages, made one commit in a
    hundred that slow. Commits checkpoint only past `WAL_BACKSTOP_PAGES`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._pid = 0
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True).start()

    def _run(self) -> None:
        pid = os.getpid()
        connection = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        try:
            while self._pid == pid:
                time.sleep(CHECKPOINT_EVERY_SECONDS)
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, or the file is gone (tests)
                    if not Path(self._path).exists():
                        return
                    log.debug("checkpoint skipped: %s", exc)
        finally:
            connection.close()
