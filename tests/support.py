"""Small helpers shared by tests (import as `tests.support`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def register(client: Any, email: str = "owner@example.com") -> tuple[str, dict[str, Any]]:
    response = client.post("/v1/auth/register", json={"email": email, "password": "correct horse"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    return body["api_key"], body["account"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_job(client: Any, key: str, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")
        time.sleep(0.05)


class Worker:
    """A real `celery worker` process consuming our queues."""

    def __init__(
        self, env: dict[str, str], queues: str = "text,image,default", concurrency: int = 2
    ):
        self.env = {**os.environ, **env}
        self.queues = queues
        self.concurrency = concurrency
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> Worker:
        celery = Path(sys.executable).parent / "celery"
        self.process = subprocess.Popen(
            [
                str(celery),
                "-A",
                "workers.celery_app:celery",
                "worker",
                "-Q",
                self.queues,
                "-c",
                str(self.concurrency),
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.process
            assert self.process.stdout
            for line in self.process.stdout:
                self.output.append(line)
                if " ready." in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise RuntimeError("celery worker did not start:\n" + "".join(self.output[-50:]))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
