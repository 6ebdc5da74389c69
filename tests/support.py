"""Small helpers shared by tests (import as `tests.support`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ops.processes import CeleryWorker

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


class Worker(CeleryWorker):
    """A real `celery worker` process consuming our queues."""

    metrics_port: int | None = None
