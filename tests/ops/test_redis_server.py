"""The embedded Redis must really serve, and must really go away."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from ops.ports import free_port, port_is_open, wait_for_port
from ops.redis_server import RedisServer, find_redis_server


def _process_gone(pid: int, timeout: float = 5.0) -> bool:
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


def test_find_redis_server_returns_an_executable() -> None:
    binary = find_redis_server()
    assert os.access(binary, os.X_OK)


def test_redis_server_serves_and_stops_cleanly() -> None:
    server = RedisServer()
    with server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        pid = server.pid
        assert pid is not None
        tmpdir = server.tmpdir
        assert tmpdir is not None
        assert tmpdir.is_dir()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            client.set("greeting", "hello")
            assert client.get("greeting") == b"hello"
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()
    assert _process_gone(pid)
    assert not port_is_open("127.0.0.1", server.port)
    assert not tmpdir.exists()
    server.stop()  # idempotent


def test_redis_server_on_requested_port() -> None:
    port = free_port()
    with RedisServer(port=port) as server:
        assert server.port == port
        wait_for_port("127.0.0.1", port, timeout=1)
    assert not port_is_open("127.0.0.1", port)


def test_wait_for_port_times_out_with_a_clear_message() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port("127.0.0.1", port, timeout=0.2)
