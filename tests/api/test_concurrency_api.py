"""Per-account concurrency through the API, without a worker: `GET /v1/account` shows
the slots in use and the plan's cap; only admitted jobs reach the broker; the cap is
admin-editable; cancel ends a queued job now and records it for a running one.

What is sent to the broker is recorded instead of sent, so the suite's shared worker
(if another test started it) cannot run these jobs; the e2e tests send for real.
"""

from __future__ import annotations

from typing import Any

import pytest

from models import Job
from models.db import transaction
from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}
IMAGE = {"operation": "image_generation", "input": {"prompt": "a lighthouse"}}


def concurrency(client: Any, key: str) -> dict[str, int]:
    body: dict[str, int] = client.get("/v1/account", headers=auth(key)).get_json()["concurrency"]
    return body


def submit(client: Any, key: str) -> str:
    response = client.post("/v1/jobs", json=IMAGE, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "queued"
    job_id: str = response.get_json()["id"]
    return job_id


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ids: list[str] = []

    def record(job_id: str, operation: str) -> None:
        ids.append(job_id)

    monkeypatch.setattr("workers.dispatch.enqueue_job", record)
    monkeypatch.setattr("api.jobs.enqueue_job", record)
    return ids


def test_jobs_beyond_the_cap_wait_in_the_database_not_the_broker(
    client: Any, sent: list[str]
) -> None:
    key, account = register(client)
    assert concurrency(client, key) == {"running": 0, "limit": 2, "queued": 0}
    assert account["plan"]["max_concurrent_jobs"] == 2

    ids = [submit(client, key) for _ in range(5)]

    assert concurrency(client, key) == {"running": 2, "limit": 2, "queued": 3}
    assert sent == ids[:2]
    cancelled = client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth(key))
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    # Its slot went to the oldest waiting job, which was sent to the broker.
    assert concurrency(client, key) == {"running": 2, "limit": 2, "queued": 2}
    assert sent == ids[:3]


def test_the_cap_is_admin_editable(client: Any) -> None:
    updated = client.patch(
        "/v1/admin/plans/free-trial", json={"max_concurrent_jobs": 7}, headers=ADMIN
    )
    assert updated.status_code == 200
    assert updated.get_json()["max_concurrent_jobs"] == 7
    key, _ = register(client)
    assert concurrency(client, key)["limit"] == 7
    refused = client.patch(
        "/v1/admin/plans/free-trial", json={"max_concurrent_jobs": 0}, headers=ADMIN
    )
    assert refused.status_code == 422
    assert "max_concurrent_jobs" in refused.get_json()["error"]["fields"]


def test_cancel_of_a_running_job_is_accepted_and_recorded(client: Any, sent: list[str]) -> None:
    key, _ = register(client)
    job_id = submit(client, key)
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = "running"  # as a worker would have it

    first = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))

    assert first.status_code == again.status_code == 200
    body = again.get_json()
    assert body["status"] == "running"
    assert body["cancel_requested_at"] == first.get_json()["cancel_requested_at"] is not None
    other_key, _ = register(client, "other@example.com")
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(other_key)).status_code == 404
