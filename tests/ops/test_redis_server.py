"""The embedded Redis must really serve, and must really go away."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

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


def _celery(url: str) -> Any:
    """The project's Celery settings (queues, routes) on the given broker."""
    app = Celery("aijobs-test", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    return app


def _queued_job_ids(url: str, queue: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()
    return sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in messages)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
def test_a_persistent_redis_keeps_queued_jobs_across_a_restart(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """`make run`'s broker: jobs queued through Celery are still queued after Redis
    stops (cleanly, or killed outright) and starts again on the same port and dir."""
    data_dir = tmp_path / "redis"
    job_ids = [f"job_{n}" for n in range(10)]
    server = RedisServer(data_dir=data_dir).start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()
        app = _celery(server.url)
        for job_id in job_ids:
            app.send_task("tasks.clustering", args=[job_id])
        app.close()
        assert _queued_job_ids(server.url, "text") == job_ids
        port = server.port

        assert server.proc is not None
        server.proc.send_signal(stop_signal)
        server.proc.wait(10)
        server.restart()

        assert server.port == port
        assert _queued_job_ids(server.url, "text") == job_ids
    finally:
        server.stop()
    assert (data_dir / "appendonly.aof").exists() or (data_dir / "appendonlydir").is_dir()
    assert (data_dir / "redis.log").exists()


def test_a_new_server_on_the_same_data_dir_finds_the_queue(tmp_path: Path) -> None:
    """What a restart of the whole stack does: a fresh RedisServer, same dir, any port."""
    with RedisServer(data_dir=tmp_path) as first:
        app = _celery(first.url)
        app.send_task("tasks.image_generation", args=["job_img"])
        app.close()
    with RedisServer(data_dir=tmp_path) as second:
        assert _queued_job_ids(second.url, "image") == ["job_img"]


def test_a_data_dir_serves_one_redis_server_at_a_time(tmp_path: Path) -> None:
    """Two servers appending to one file would corrupt it; the second is refused, and
    still is while a server started by the first owner outlives it."""
    first = RedisServer(data_dir=tmp_path).start()
    try:
        with pytest.raises(RuntimeError, match="another redis-server is using"):
            RedisServer(data_dir=tmp_path).start()
        orphan, first.proc = first.proc, None  # as if its owner died and it did not
        assert orphan is not None
        first.stop()
        with pytest.raises(RuntimeError, match="another redis-server is using"):
            RedisServer(data_dir=tmp_path).start()
        orphan.terminate()
        orphan.wait(10)
    finally:
        first.stop()
    with RedisServer(data_dir=tmp_path) as again:
        client = redis.Redis.from_url(again.url)
        assert client.ping()
        client.close()
