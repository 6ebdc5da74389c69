"""`make run` for real: the supervisor brings up Redis, the provider, gunicorn, a worker,
beat and Flower; a job of every operation succeeds over HTTP; SIGTERM stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.ports import free_port, port_is_free
from tests.e2e.test_jobs_e2e import JOBS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.api_port = free_port()
        self.flower_port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if key
            not in {
                "DATABASE_URL",
                "REDIS_URL",
                "CELERY_BROKER_URL",
                "OPENAI_BASE_URL",
                "OPENAI_API_KEY",
                "ADMIN_TOKEN",
            }
        }
        env |= {
            "API_PORT": str(self.api_port),
            "FLOWER_PORT": str(self.flower_port),
            "DATABASE_URL": f"sqlite:///{tmp / 'stack.db'}",
            "ADMIN_TOKEN": "stack-admin",
            "RATE_LIMITS_ENABLED": "0",
            "SWEEP_INTERVAL_SECONDS": "2",  # beat's every-minute entries, every 2 s here
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.stack"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "curl" in line and "register" in line:
                self.ready.set()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"))
    if not running.ready.wait(120):
        running.stop()
        pytest.fail("make run did not come up:\n" + "".join(running.output[-60:]))
    yield running
    running.stop()


def _wait(client: httpx.Client, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_make_run_serves_every_operation(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        key = client.post(
            "/v1/auth/register", json={"email": "stack@example.com", "password": "long enough"}
        ).json()["api_key"]
        headers = {"Authorization": f"Bearer {key}"}
        for operation, job_input in JOBS.items():
            before = client.get("/v1/account", headers=headers).json()["credits"]
            submitted = client.post(
                "/v1/jobs", json={"operation": operation, "input": job_input}, headers=headers
            )
            assert submitted.status_code == 202, submitted.text
            job = _wait(client, key, submitted.json()["id"])
            assert job["status"] == "succeeded", job
            assert 0 < job["credits_charged"] <= job["reserved_credits"]
            after = client.get("/v1/account", headers=headers).json()["credits"]
            assert after["available"] == before["available"] - job["credits_charged"]
            assert after["reserved"] == 0
        deductions = [
            t
            for t in client.get("/v1/credits/transactions?limit=100", headers=headers).json()[
                "data"
            ]
            if t["type"] == "deduction"
        ]
        assert len(deductions) == len(JOBS)


def test_flower_lists_the_worker_and_its_queues(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.flower_port}"
    deadline = time.monotonic() + 30
    queues: set[str] = set()
    while time.monotonic() < deadline and not {"text", "image", "webhooks"} <= queues:
        workers = httpx.get(f"{url}/api/workers", params={"refresh": "1"}, timeout=10).json()
        queues = {q["name"] for info in workers.values() for q in info.get("active_queues", [])}
        time.sleep(0.5)
    assert workers, "Flower lists no worker"
    assert {"text", "image", "webhooks"} <= queues


def test_beat_runs_the_schedule_and_the_worker_runs_what_it_sends(stack: Stack) -> None:
    wanted = (
        "Scheduler: Sending due task sweep-expired-holds (tasks.periodic.sweep_expired_holds)",
        "periodic sweep: 0 expired hold(s) released",
        "periodic webhooks: 0 overdue webhook deliveries requeued",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = list(stack.output)
        if all(any(w in line for line in lines) for w in wanted):
            break
        time.sleep(0.2)
    beat = [line for line in lines if line.startswith("[beat]")]
    worker = [line for line in lines if line.startswith("[worker]")]
    assert any("Sending due task sweep-expired-holds" in line for line in beat), beat[-20:]
    assert any("periodic sweep: 0 expired hold(s) released" in line for line in worker), worker[
        -20:
    ]
    assert any("periodic webhooks:" in line for line in worker), worker[-20:]


def test_the_banner_shows_urls_and_a_copy_paste_session(stack: Stack) -> None:
    banner = "".join(stack.output)
    assert stack.api in banner
    assert str(stack.flower_port) in banner
    assert "stack-admin" in banner
    assert "/v1/jobs" in banner


def test_sigterm_stops_every_child(tmp_path: Path) -> None:
    running = Stack(tmp_path)
    assert running.ready.wait(120), "".join(running.output[-60:])

    assert running.stop() == 0
    time.sleep(0.5)
    assert port_is_free("127.0.0.1", running.api_port)
    assert port_is_free("127.0.0.1", running.flower_port)
    leftover = subprocess.run(
        ["pgrep", "-g", str(running.process.pid)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""
