"""Metrics end to end: a real Prometheus server scrapes the API (served over HTTP from
this process) and the session's Celery worker, and answers PromQL about a job's life."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ops.prometheus_server import PrometheusServer
from tests.support import Worker, auth, register, serving, wait_for_job

pytestmark = pytest.mark.e2e
JOB = {"operation": "image_generation", "input": {"prompt": "a lighthouse at dusk"}}


@pytest.fixture
def served_api(app: Any) -> Iterator[str]:
    with serving(app) as url:
        yield url.removeprefix("http://")


@pytest.fixture
def prometheus(served_api: str, worker: Worker) -> Iterator[PrometheusServer]:
    targets = {"api": served_api, "worker": f"127.0.0.1:{worker.metrics_port}"}
    with PrometheusServer(targets) as server:
        yield server


def eventually(server: PrometheusServer, promql: str, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = server.query(promql)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no series for {promql!r} within {timeout}s")
        time.sleep(0.5)


def test_prometheus_sees_a_job_from_submission_to_worker(
    e2e: Any, prometheus: PrometheusServer
) -> None:
    key, _ = register(e2e)
    job = e2e.post("/v1/jobs", json=JOB, headers=auth(key)).get_json()
    assert wait_for_job(e2e, key, job["id"])["status"] == "succeeded"

    submitted = eventually(
        prometheus, 'aijobs_jobs_submitted_total{operation="image_generation",plan="free-trial"}'
    )
    assert float(submitted[0]["value"][1]) >= 1
    succeeded = eventually(
        prometheus, 'celery_task_succeeded_total{name="tasks.image_generation",job="worker"}'
    )
    assert float(succeeded[0]["value"][1]) >= 1
    runtime = eventually(prometheus, "celery_task_runtime_count")
    assert sum(float(series["value"][1]) for series in runtime) >= 1
    queues = eventually(prometheus, "celery_queue_length")
    assert {series["metric"]["queue_name"] for series in queues} >= {"text", "image", "webhooks"}
    assert eventually(prometheus, "aijobs_state_up == 1")
    assert eventually(prometheus, 'up{job="worker"} == 1')
    finished = eventually(
        prometheus, 'aijobs_jobs_finished_total{operation="image_generation",status="succeeded"}'
    )
    assert float(finished[0]["value"][1]) >= 1
    assert eventually(prometheus, 'aijobs_provider_calls_total{outcome="ok",job="worker"}')
    assert eventually(prometheus, "aijobs_provider_latency_seconds_count > 0")
    assert eventually(prometheus, 'aijobs_credits_charged_total{operation="image_generation"} > 0')
    assert eventually(prometheus, "aijobs_job_queue_wait_seconds_count > 0")
    assert eventually(prometheus, "aijobs_job_duration_seconds_count > 0")
    held = eventually(prometheus, "aijobs_credits_held")
    assert float(held[0]["value"][1]) == 0  # the job settled: nothing left on hold
