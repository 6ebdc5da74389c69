"""Child processes that tests and benchmarks start: a real `celery worker`, stopped by
its process group so its pool children go with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CELERY_APP = "workers.celery_app:celery"


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


class CeleryWorker:
    """One `celery worker` process consuming `queues`; `output` keeps its log lines.

    Pool and concurrency come from celeryconfig (WORKER_POOL, WORKER_CONCURRENCY) unless
    `concurrency` is given."""

    def __init__(
        self,
        env: dict[str, str],
        queues: str = "text,image,default",
        concurrency: int | None = None,
        *,
        name: str = "test",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.env = {**os.environ, **env}
        self.queues = queues
        self.concurrency = concurrency
        self.name = name
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def command(self) -> list[str]:
        celery = Path(sys.executable).parent / "celery"
        concurrency = [] if self.concurrency is None else ["-c", str(self.concurrency)]
        return [
            str(celery), "-A", CELERY_APP, "worker", "-Q", self.queues, *concurrency,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"{self.name}-{os.getpid()}-{time.monotonic_ns()}@%h", *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 60) -> CeleryWorker:
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.process is not None
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                if " ready." in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("celery worker did not start:\n" + "".join(self.output[-50:]))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_group(self.process, sig)
