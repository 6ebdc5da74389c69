"""The jobs API without a worker: validation, idempotency, isolation, pagination."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from billing import reconciliation
from models import utcnow
from models.db import transaction
from tests.support import auth, register

CLUSTER = {"operation": "clustering", "input": {"keywords": ["a b", "a c"]}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operation": "telepathy", "input": {}}, "operation"),
        ({"operation": "clustering"}, "input"),
        ({"operation": "clustering", "input": {}}, "input.keywords"),
        ({"operation": "clustering", "input": {"keywords": [1, 2]}}, "input.keywords.0"),
        ({"operation": "clustering", "input": {"keywords": "a, b"}}, "input.keywords"),
        ({"operation": "clustering", "input": {"keywords": ["x" * 301]}}, "input.keywords.0"),
        (
            {"operation": "content_generation", "input": {"title": "t", "word_count": "500"}},
            "input.word_count",
        ),
        ({"operation": "content_generation", "input": {"title": ""}}, "input.title"),
        ({"operation": "image_generation", "input": {"prompt": "p", "count": 11}}, "input.count"),
        (
            {"operation": "image_generation", "input": {"prompt": "p", "colour": "red"}},
            "input.colour",
        ),
        ({"operation": "idea_generation", "input": {"cluster": "Running"}}, "input.cluster"),
        ({"operation": 7, "input": {}}, "operation"),
        ({"operation": "clustering", "input": [1]}, "input"),
        ({**CLUSTER, "priority": "high"}, "priority"),
        ({**CLUSTER, "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ],
)
def test_bad_job_input_is_422_naming_the_field(
    client: Any, key: str, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=body, headers=auth(key))

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["fields"], error
    assert error["message"]
    assert client.get("/v1/jobs", headers=auth(key)).get_json()["data"] == []


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("not json", "application/json"),
        ("[1, 2]", "application/json"),
        ('{"operation": "clustering"', "application/json"),
        ("operation=clustering", "application/x-www-form-urlencoded"),
    ],
)
def test_body_that_is_not_a_json_object_is_422(
    client: Any, key: str, data: str, content_type: str
) -> None:
    response = client.post("/v1/jobs", data=data, content_type=content_type, headers=auth(key))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_oversized_body_is_422_and_writes_nothing(client: Any, key: str) -> None:
    huge = {"operation": "image_prompt_extraction", "input": {"text": "word " * 80_000}}
    response = client.post("/v1/jobs", json=huge, headers=auth(key))
    assert response.status_code == 422
    assert "too large" in response.get_json()["error"]["message"]
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"]["reserved"] == 0


def test_submit_returns_the_contract_fields(client: Any, key: str) -> None:
    response = client.post("/v1/jobs", json=CLUSTER, headers=auth(key))

    assert response.status_code == 202
    job = response.get_json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["operation"] == "clustering"
    assert job["model"] == "gpt-4o-mini"
    assert job["reserved_credits"] > 0
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert account["credits"]["reserved"] == job["reserved_credits"]
    assert account["credits"]["available"] == 2000 - job["reserved_credits"]


def test_idempotency_key_replays_the_first_job(client: Any, key: str) -> None:
    headers = {**auth(key), "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=CLUSTER, headers=headers)
    second = client.post("/v1/jobs", json=CLUSTER, headers=headers)
    conflict = client.post(
        "/v1/jobs", json={**CLUSTER, "input": {"keywords": ["other"]}}, headers=headers
    )

    assert first.status_code == second.status_code == 202
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["code"] == "idempotency_conflict"
    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert account["credits"]["reserved"] == first.get_json()["reserved_credits"]


def test_a_job_the_broker_refused_frees_its_idempotency_key(
    client: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503 says 'retry': the retry with the same key submits anew instead of replaying
    the failed job forever."""
    sent: list[str] = []

    def broker(job_id: str, operation: str) -> None:
        if not sent:
            sent.append("refused")
            raise ConnectionError("broker down")
        sent.append(job_id)

    monkeypatch.setattr("api.jobs.enqueue_job", broker)
    headers = {**auth(key), "Idempotency-Key": "order-43"}
    refused = client.post("/v1/jobs", json=CLUSTER, headers=headers)
    assert refused.status_code == 503
    failed = refused.get_json()["error"]["job_id"]

    retried = client.post("/v1/jobs", json=CLUSTER, headers=headers)
    again = client.post("/v1/jobs", json=CLUSTER, headers=headers)

    assert retried.status_code == 202, retried.get_json()
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.get_json()["id"] != failed
    assert sent == ["refused", retried.get_json()["id"]]
    assert again.headers["Idempotent-Replayed"] == "true"  # the key now names the new job
    assert again.get_json()["id"] == retried.get_json()["id"]
    old = client.get(f"/v1/jobs/{failed}", headers=auth(key)).get_json()
    assert (old["status"], old["error"]["code"]) == ("failed", "broker_unavailable")


def test_a_job_the_broker_refused_while_the_database_is_gone_too_is_accepted_not_a_500(
    client: Any, key: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API host loses its network right after the commit: the broker refuses the job
    and the database cannot record the refusal. The job is committed and holds its slot,
    so the reconciler sends it once the broker is back: that is a 202 with the job (a 500
    would have the client submit it again, and pay twice), never a 500."""
    database = env["DATABASE_URL"]

    def broker(job_id: str, operation: str) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/gone")
        raise ConnectionError("broker down")

    monkeypatch.setattr("api.jobs.enqueue_job", broker)
    submitted = client.post("/v1/jobs", json=CLUSTER, headers=auth(key))
    monkeypatch.setenv("DATABASE_URL", database)

    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["id"]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()
    assert job["status"] == "queued"
    later = utcnow() + timedelta(hours=1)
    policy = reconciliation.Policy(timedelta(seconds=45), timedelta(seconds=45), 5)
    with transaction() as session:
        done = reconciliation.reconcile(
            session, later, policy, reconciliation.InBroker(frozenset())
        )
    assert [d.job_id for d in done.resent] == [job_id]  # sent once the broker is back


def test_idempotency_keys_are_per_account(client: Any, key: str) -> None:
    other = register(client, "other@example.com")[0]
    mine = client.post("/v1/jobs", json=CLUSTER, headers={**auth(key), "Idempotency-Key": "k"})
    theirs = client.post("/v1/jobs", json=CLUSTER, headers={**auth(other), "Idempotency-Key": "k"})
    assert mine.get_json()["id"] != theirs.get_json()["id"]


def test_other_accounts_jobs_are_404(client: Any, key: str) -> None:
    job_id = client.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()["id"]
    intruder = register(client, "intruder@example.com")[0]

    assert client.get(f"/v1/jobs/{job_id}", headers=auth(intruder)).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(intruder)).status_code == 404
    assert client.get("/v1/jobs", headers=auth(intruder)).get_json()["data"] == []
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()["status"] == "queued"


def test_unknown_job_is_404_json(client: Any, key: str) -> None:
    response = client.get("/v1/jobs/job_nope", headers=auth(key))
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_list_pages_with_cursor_and_filters(client: Any, key: str) -> None:
    ids = [
        client.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()["id"] for _ in range(5)
    ]
    client.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "p"}},
        headers=auth(key),
    )

    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/jobs?operation=clustering&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth(key)).get_json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    queued = client.get("/v1/jobs?status=queued&limit=100", headers=auth(key)).get_json()["data"]
    assert len(queued) == 6


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=ten", "status=done", "operation=x", "cursor=%%%"]
)
def test_bad_list_query_is_422(client: Any, key: str, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=auth(key))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_cancel_queued_job_releases_the_hold(client: Any, key: str) -> None:
    job_id = client.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()["id"]

    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))

    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    credits = client.get("/v1/account", headers=auth(key)).get_json()["credits"]
    assert credits == {"balance": 2000, "reserved": 0, "available": 2000}
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key)).status_code == 409


def test_transactions_page_newest_first(client: Any) -> None:
    key, account = register(client)
    for amount in (10, 20, 30):
        client.post(
            f"/v1/admin/accounts/{account['id']}/credits",
            json={"amount": amount, "reason": f"bonus {amount}"},
            headers={"X-Admin-Token": "test-admin-token"},
        )
    first = client.get("/v1/credits/transactions?limit=2", headers=auth(key)).get_json()
    rest = client.get(
        f"/v1/credits/transactions?limit=2&cursor={first['next_cursor']}", headers=auth(key)
    ).get_json()

    amounts = [t["amount"] for t in first["data"] + rest["data"]]
    assert amounts == [30, 20, 10, 2000]
    assert [t["balance_after"] for t in first["data"]] == [2060, 2030]
    assert rest["next_cursor"] is None
    assert {"type", "amount", "balance_after", "description", "created_at"} <= set(first["data"][0])


def test_nul_bytes_in_ids_and_bodies_are_refused_not_500(client: Any, key: str) -> None:
    by_id = client.post("/v1/jobs/%00/cancel", headers=auth(key))
    in_body = client.post("/v1/sites", json={"name": "a\x00b"}, headers=auth(key))
    assert by_id.status_code in (404, 422)
    assert in_body.status_code in (201, 403, 422)
    assert by_id.get_json()["error"]["code"] in ("not_found", "invalid_request")


def test_an_input_whose_answer_exceeds_the_models_output_cap_is_refused_up_front(
    client: Any, key: str
) -> None:
    """1,000 keywords (within the input limits) would ask gpt-4o-mini for ~50,000 output
    tokens; OpenAI refuses any max_tokens above 16,384, after the hold was taken. The
    submission, its estimate and an automation run with such keywords are a 422 that
    says why; a smaller job goes through."""
    keywords = [f"best trail running shoes {n}" for n in range(1000)]
    big = {"operation": "clustering", "input": {"keywords": keywords}}
    long_keywords = [f"{'very long keyword phrase ' * 11}{n}" for n in range(100)]

    answers = [
        client.post("/v1/jobs", json=big, headers=auth(key)),
        client.post("/v1/jobs/estimate", json=big, headers=auth(key)),
        client.post("/v1/automations", json={"keywords": long_keywords}, headers=auth(key)),
    ]

    for refused in answers:
        assert refused.status_code == 422, refused.get_json()
        error = refused.get_json()["error"]
        assert error["max_output_tokens"] == 16_384
        assert error["output_tokens"] > 16_384
        assert "gpt-4o-mini writes at most 16,384" in error["message"]
    assert client.get("/v1/jobs", headers=auth(key)).get_json()["data"] == []
    assert client.get("/v1/automations", headers=auth(key)).get_json()["data"] == []
    small = {"operation": "clustering", "input": {"keywords": keywords[:100]}}
    assert client.post("/v1/jobs", json=small, headers=auth(key)).status_code == 202
    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert account["credits"]["reserved"] > 0
