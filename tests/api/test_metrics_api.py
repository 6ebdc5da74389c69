"""GET /metrics: Prometheus text with the job, HTTP and state families; a token when set."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import auth, register

JOB = {"operation": "image_generation", "input": {"prompt": "a red kite", "count": 2}}


def scrape(client: Any, **headers: str) -> dict[str, Any]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family_name = name.removesuffix("_total")
    return sum(
        s.value
        for s in families[family_name].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_count_submissions_and_show_holds(client: Any) -> None:
    before = scrape(client)
    key, _ = register(client)
    job = client.post("/v1/jobs", json=JOB, headers=auth(key)).get_json()
    client.get("/v1/jobs/job_missing", headers=auth(key))
    after = scrape(client)

    def submitted(families: dict[str, Any]) -> float:
        if "aijobs_jobs_submitted" not in families:
            return 0.0
        return sample(
            families, "aijobs_jobs_submitted_total", operation="image_generation", plan="free-trial"
        )

    assert submitted(after) == submitted(before) + 1
    assert sample(after, "aijobs_credits_held") == job["reserved_credits"] == 2
    assert sample(after, "aijobs_holds_open") == 1
    assert sample(after, "aijobs_jobs", status="queued") == 1
    assert sample(after, "aijobs_state_up") == 1
    assert sample(after, "aijobs_http_responses_total", endpoint="/v1/jobs/<job_id>", status="404")
    assert {s.labels["queue_name"] for s in after["celery_queue_length"].samples} >= {"text"}


def test_state_gauges_fail_soft(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    families = scrape(client)
    assert sample(families, "aijobs_state_up") == 0


def test_a_metrics_token_is_required_when_set(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "scrape-secret")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "aijobs_state_up" in scrape(client, Authorization="Bearer scrape-secret")


def test_automation_runs_are_counted_by_plan(client: Any) -> None:
    key, _ = register(client, "runs@example.com")
    run = {"keywords": ["running shoes"], "stages": ["clustering"]}

    def runs(families: dict[str, Any]) -> float:
        if "aijobs_automations_submitted" not in families:
            return 0.0
        return sample(families, "aijobs_automations_submitted_total", plan="free-trial")

    before = scrape(client)
    submitted = client.post("/v1/automations", json=run, headers=auth(key))
    replayed = client.post(
        "/v1/automations", json=run, headers={**auth(key), "Idempotency-Key": "once"}
    )
    client.post("/v1/automations", json=run, headers={**auth(key), "Idempotency-Key": "once"})

    assert (submitted.status_code, replayed.status_code) == (202, 202)
    assert runs(scrape(client)) == runs(before) + 2  # a replay is not a second run


def test_made_up_methods_and_unmatched_paths_do_not_create_series(client: Any) -> None:
    """Labels come from bounded sets: a client making up methods or paths adds no series."""
    made_up = ["XQ0Z", "XQ1Z", "XQ2Z", "PROPFIND"]

    def other(families: dict[str, Any]) -> float:
        if "aijobs_http_responses" not in families:
            return 0.0
        return sample(families, "aijobs_http_responses_total", method="other", endpoint="unmatched")

    before = scrape(client)
    for method in made_up:
        assert client.open("/v1/account", method=method).status_code == 405
    for n in range(3):
        assert client.get(f"/v1/no-such-path/{n}").status_code == 404
    after = scrape(client)

    series = [s.labels for s in after["aijobs_http_responses"].samples if s.name.endswith("_total")]
    methods = {labels["method"] for labels in series}
    assert methods <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"}
    assert [s for s in series if s["method"] == "other" and s["endpoint"] == "unmatched"] == [
        {"method": "other", "endpoint": "unmatched", "status": "405"}
    ]
    assert other(after) == other(before) + len(made_up)
    assert not any("no-such-path" in labels["endpoint"] for labels in series)
    assert sample(after, "aijobs_http_responses_total", method="GET", endpoint="unmatched") >= 3
