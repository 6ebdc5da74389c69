"""The throwaway PostgreSQL cluster must really serve, and must really go away."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest

from ops.ports import port_is_open
from ops.postgres_server import PostgresServer, find_pg_bindir

pytestmark = pytest.mark.postgres


def _process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Gone means no such pid, or a zombie waiting for init to reap it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_find_pg_bindir_has_server_binaries() -> None:
    bindir = Path(find_pg_bindir())
    assert os.access(bindir / "initdb", os.X_OK)
    assert os.access(bindir / "pg_ctl", os.X_OK)


def test_postgres_server_serves_and_stops_cleanly() -> None:
    server = PostgresServer()
    with server:
        assert server.url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/aijobs_test"
        pid = server.pid
        assert pid is not None
        tmpdir = server.tmpdir
        assert tmpdir is not None
        with psycopg.connect(_libpq(server.url)) as conn:
            row = conn.execute("SELECT version()").fetchone()
            assert row is not None
            assert row[0].startswith("PostgreSQL")
            assert conn.execute("SELECT current_database()").fetchone() == ("aijobs_test",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)

        other = server.create_database("aijobs_other")
        assert other.endswith(f":{server.port}/aijobs_other")
        with psycopg.connect(_libpq(other)) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert _process_gone(pid)
    assert not port_is_open("127.0.0.1", server.port)
    assert not tmpdir.exists()
    server.stop()  # idempotent
