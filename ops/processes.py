"""Child processes that tests and benchmarks start: a real `celery worker`, `celery beat`
and the API under gunicorn, each stopped by its process group so its children go too."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from ops.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
CELERY_APP = "workers.celery_app:celery"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent: the child then only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send the child SIGTERM when its parent dies, so
    children in their own sessions (out of reach of the terminal's SIGHUP) cannot outlive
    a supervisor that was SIGKILLed. None where there is no prctl (not Linux).

    The kernel's "parent" is the thread that started the child: call Popen from a thread
    that lives as long as the process (the main one). The child runs only a foreign call
    and a getppid between fork and exec, nothing that takes a lock another thread of the
    parent may have held. A parent that died before the prctl is seen by getppid."""
    if _prctl is None:
        return None
    prctl, parent, sigterm = _prctl, os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the child's own process group (started with start_new_session), then
    SIGKILL it if it has not exited within `timeout`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Child:
    """A child process whose merged output is kept in `output`; ready when a line
    containing `ready_marker` appears (or when `is_ready()` says so)."""

    ready_marker = ""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def start(self, timeout: float = 60) -> Self:
        self._ready.clear()
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                name = type(self).__name__
                raise RuntimeError(f"{name} did not start:\n" + "".join(self.output[-50:]))
            time.sleep(0.05)
        return self

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)
            if self.ready_marker and self.ready_marker in line:
                self._ready.set()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_group(self.process, sig)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class CeleryWorker(Child):
    """One `celery worker` process consuming `queues`.

    Pool and concurrency come from celeryconfig (WORKER_POOL, WORKER_CONCURRENCY) unless
    `concurrency` is given."""

    ready_marker = " ready."

    def __init__(
        self,
        env: dict[str, str],
        queues: str = "text,image,default",
        concurrency: int | None = None,
        *,
        name: str = "test",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(env)
        self.queues = queues
        self.concurrency = concurrency
        self.name = name
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        concurrency = [] if self.concurrency is None else ["-c", str(self.concurrency)]
        return [
            str(BIN / "celery"), "-A", CELERY_APP, "worker", "-Q", self.queues, *concurrency,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"{self.name}-{os.getpid()}-{time.monotonic_ns()}@%h", *self.extra_args,
        ]  # fmt: skip


class CeleryBeat(Child):
    """`celery beat` with the schedule of celeryconfig, its state file in a temp dir."""

    ready_marker = "beat: Starting"

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.state = tempfile.mkdtemp(prefix="aijobs-beat-")

    def command(self) -> list[str]:
        schedule = str(Path(self.state) / "celerybeat-schedule")
        return [str(BIN / "celery"), "-A", CELERY_APP, "beat", "--loglevel", "INFO", "-s", schedule]


class ApiServer(Child):
    """The API under gunicorn on a free port; ready when /healthz answers 200."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        super().__init__(env)
        self.workers = workers
        self.port = free_port(HOST)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [
            str(BIN / "gunicorn"), "--workers", str(self.workers), "--bind", f"{HOST}:{self.port}",
            "api.app:create_app()",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
