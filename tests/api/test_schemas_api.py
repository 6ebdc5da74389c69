"""Every answer matches the response schema the OpenAPI document publishes for it.

The dicts the views return are built by the billing `*_view` functions, and the schemas
come from the pydantic models in `api/schemas.py`; these tests hold one to the other on
real answers, strictly: a field the schema does not declare fails too, so a view that
gains a field gets it documented. One end-to-end scenario (real worker, so jobs have
results, usage and artifacts) walks every endpoint a user and an operator use.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator

from tests.support import auth, on_plan, wait_for_job

ADMIN = {"X-Admin-Token": "test-admin-token"}
JOBS = {
    "clustering": {"keywords": ["running shoes", "trail running"]},
    "idea_generation": {"cluster": {"name": "Running", "keywords": ["trail running"]}},
    "content_generation": {"title": "Trail shoes", "word_count": 200},
    "image_prompt_extraction": {"text": "A runner on a misty trail.", "count": 1},
    "image_generation": {"prompt": "a misty trail", "count": 1},
}


# An error's details vary by code (`required`, `available`, `job_id` ...): open by design.
OPEN = {"ErrorDetail"}


def closed(schema: Any) -> Any:
    """`schema` with every object that lists its properties closed to others."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    shut = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in shut
        and shut.get("additionalProperties", True) is True
        and shut.get("title") not in OPEN
    ):
        shut["additionalProperties"] = False
    return shut


class Conformance:
    """Checks answers against the document; remembers which operations it saw."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.components = closed(copy.deepcopy(document["components"]))
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, response: Any, method: str, path: str) -> Any:
        operation = self.document["paths"][path][method]
        status = str(response.status_code)
        declared = operation["responses"].get(status)
        assert declared is not None, f"{method.upper()} {path}: {status} is not documented"
        if "$ref" in declared:
            declared = self.document["components"]["responses"][status]
        for name, header in declared.get("headers", {}).items():
            if "$ref" in header:
                header = self.document["components"]["headers"][name]
            if header.get("required"):
                assert name in response.headers, f"{method.upper()} {path}: no {name} header"
        content = declared.get("content", {})
        if not content:
            assert response.data == b"", f"{method.upper()} {path}: a body where none is due"
            self.seen.add((method, path))
            return None
        assert response.mimetype in content, (method, path, response.mimetype)
        schema = content[response.mimetype]["schema"]
        body = response.get_json() if response.is_json else response.get_data(as_text=True)
        validator = OAS31Validator({**closed(schema), "components": self.components})
        errors = [
            f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in validator.iter_errors(body)
        ]
        assert errors == [], f"{method.upper()} {path} {status}: " + "; ".join(errors[:10])
        self.seen.add((method, path))
        return body


@pytest.fixture
def conform(client: Any) -> Conformance:
    return Conformance(client.get("/v1/openapi.json").get_json())


def test_every_endpoint_declares_its_response_model(app: Any) -> None:
    """A new endpoint without `@responds(Model)` fails here, named."""
    from api.openapi import undocumented_responses

    missing = undocumented_responses(app)
    assert missing == [], (
        "These endpoints declare no response model; add @responds(Model, status) "
        "(api/schemas.py) under the route decorator:\n  " + "\n  ".join(missing)
    )


def test_no_success_schema_is_a_bare_object(conform: Conformance) -> None:
    bare = [
        f"{method.upper()} {path} {status}"
        for path, operations in conform.document["paths"].items()
        for method, operation in operations.items()
        for status, answer in operation["responses"].items()
        if status.startswith("2")
        for media in answer.get("content", {}).values()
        if media["schema"] in ({"type": "object"}, {})
    ]
    assert bare == []


def test_error_statuses_follow_from_the_decorators(conform: Conformance) -> None:
    paths = conform.document["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"401", "402", "403", "422", "429", "409"} <= statuses("/v1/jobs", "post")
    assert {"401", "404"} <= statuses("/v1/admin/accounts/{account_id}", "get")
    assert "403" not in statuses("/v1/admin/accounts/{account_id}", "get")
    assert "404" in statuses("/v1/jobs/{job_id}", "get")
    assert "422" in statuses("/v1/jobs", "get")  # its query is validated
    assert "401" not in statuses("/v1/auth/register", "post")
    assert {"409", "422"} <= statuses("/v1/auth/register", "post")
    assert "204" in statuses("/v1/keywords/{keyword_id}", "delete")


def test_a_405_says_which_methods_are_allowed(client: Any, key: str) -> None:
    response = client.delete("/v1/jobs", headers=auth(key))
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    # A literal segment is not taken for an id, so OPTIONS lists exactly its methods.
    options = client.options("/v1/jobs/estimate", headers=auth(key))
    assert set(options.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs",
        "/v1/billing/payments",
        "/v1/admin/jobs",
        "/v1/admin/accounts",
        "/v1/admin/purchases",
    ],
)
def test_an_unknown_status_filter_is_a_clear_422(client: Any, key: str, path: str) -> None:
    response = client.get(f"{path}?status=bogus", headers={**auth(key), **ADMIN})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert list(error["fields"]) == ["status"]
    assert "(" not in error["message"]
    assert "[" not in error["message"]
    assert (
        "'queued'" in error["message"]
        or "'pending'" in error["message"]
        or ("'trial'" in error["message"])
    )


@pytest.mark.e2e
def test_answers_match_their_schemas_end_to_end(e2e: Any, conform: Conformance) -> None:
    client, check = e2e, conform
    key, account_id = on_plan(client, "growth", email="schemas@example.com")
    me = auth(key)

    check(client.get("/healthz"), "get", "/healthz")
    check(client.get("/v1/plans"), "get", "/v1/plans")
    check(client.get("/v1/account", headers=me), "get", "/v1/account")
    check(client.patch("/v1/account", json={"timezone": "Europe/Paris"}, headers=me),
          "patch", "/v1/account")  # fmt: skip
    site = check(client.post("/v1/sites", json={"name": "blog"}, headers=me), "post", "/v1/sites")
    check(client.get("/v1/sites", headers=me), "get", "/v1/sites")
    check(client.get(f"/v1/sites/{site['id']}", headers=me), "get", "/v1/sites/{site_id}")
    check(client.patch(f"/v1/sites/{site['id']}", json={"domain": "example.com"}, headers=me),
          "patch", "/v1/sites/{site_id}")  # fmt: skip
    added = check(
        client.post("/v1/keywords", headers=me, json={
            "site_id": site["id"],
            "keywords": ["trail shoes", {"keyword": "hiking", "volume": 10, "cpc": "0.50"}],
        }),
        "post", "/v1/keywords",
    )  # fmt: skip
    check(client.get("/v1/keywords", headers=me), "get", "/v1/keywords")
    research = client.post("/v1/keyword-research", json={"seed": "shoes", "limit": 3}, headers=me)
    check(research, "post", "/v1/keyword-research")
    check(client.get("/v1/keyword-library", headers=me), "get", "/v1/keyword-library")
    check(client.get("/v1/ai-settings", headers=me), "get", "/v1/ai-settings")
    check(client.put("/v1/ai-settings", json={"operation": "clustering", "model": "gpt-4o"},
                     headers=me), "put", "/v1/ai-settings")  # fmt: skip
    check(client.put("/v1/webhooks/endpoint", json={"url": "https://hooks.example.com/in"},
                     headers=me), "put", "/v1/webhooks/endpoint")  # fmt: skip
    check(client.get("/v1/webhooks/endpoint", headers=me), "get", "/v1/webhooks/endpoint")
    check(client.get("/v1/webhooks/secret", headers=me), "get", "/v1/webhooks/secret")
    check(client.post("/v1/webhooks/secret/rotate", headers=me),
          "post", "/v1/webhooks/secret/rotate")  # fmt: skip

    estimate = {"operation": "clustering", "input": JOBS["clustering"]}
    check(client.post("/v1/jobs/estimate", json=estimate, headers=me), "post", "/v1/jobs/estimate")
    ids = []
    for operation, job_input in JOBS.items():
        body = {"operation": operation, "input": job_input, "site_id": site["id"]}
        submitted = client.post("/v1/jobs", json=body, headers={**me, "Idempotency-Key": operation})
        ids.append(check(submitted, "post", "/v1/jobs")["id"])
        replayed = client.post("/v1/jobs", json=body, headers={**me, "Idempotency-Key": operation})
        assert check(replayed, "post", "/v1/jobs")["id"] == ids[-1]
        conflict = client.post("/v1/jobs", json={**body, "site_id": None},
                               headers={**me, "Idempotency-Key": operation})  # fmt: skip
        assert check(conflict, "post", "/v1/jobs")["error"]["code"] == "idempotency_conflict"
    for job_id in ids:
        assert wait_for_job(client, key, job_id)["status"] == "succeeded"
        check(client.get(f"/v1/jobs/{job_id}", headers=me), "get", "/v1/jobs/{job_id}")
    check(client.get("/v1/jobs?limit=2", headers=me), "get", "/v1/jobs")
    check(client.get(f"/v1/jobs/{ids[0]}/webhook-deliveries", headers=me),
          "get", "/v1/jobs/{job_id}/webhook-deliveries")  # fmt: skip
    cancelled = client.post(f"/v1/jobs/{ids[0]}/cancel", headers=me)
    assert check(cancelled, "post", "/v1/jobs/{job_id}/cancel")["error"]["code"]
    run_body = {"keywords": ["trail shoes", "hiking"], "stages": ["clustering"]}
    check(client.post("/v1/automations/estimate", json=run_body, headers=me),
          "post", "/v1/automations/estimate")  # fmt: skip
    run_id = check(client.post("/v1/automations", json=run_body, headers=me),
                   "post", "/v1/automations")["id"]  # fmt: skip
    assert wait_for_job(client, key, jobs_of_run(client, me, run_id))["status"] == "succeeded"
    check(client.get(f"/v1/automations/{run_id}", headers=me), "get", "/v1/automations/{run_id}")
    check(client.get("/v1/automations", headers=me), "get", "/v1/automations")
    ended_run = client.post(f"/v1/automations/{run_id}/cancel", headers=me)
    assert check(ended_run, "post", "/v1/automations/{run_id}/cancel")["error"]["code"]
    for path in ("/v1/clusters", "/v1/ideas", "/v1/contents", "/v1/image-prompts", "/v1/images"):
        assert check(client.get(path, headers=me), "get", path)["data"]
    check(client.get("/v1/usage/summary", headers=me), "get", "/v1/usage/summary")
    check(client.get("/v1/usage/insights?days=7", headers=me), "get", "/v1/usage/insights")
    logs = check(client.get("/v1/usage/logs?limit=2", headers=me), "get", "/v1/usage/logs")
    assert logs["next_cursor"]
    csv = client.get("/v1/usage/logs?format=csv", headers=me)
    assert check(csv, "get", "/v1/usage/logs").startswith("id,created_at")
    check(client.get("/v1/credits/transactions", headers=me), "get", "/v1/credits/transactions")
    check(client.put("/v1/account/budget", json={"monthly_credits": 50_000}, headers=me),
          "put", "/v1/account/budget")  # fmt: skip
    check(client.get("/v1/account/budget", headers=me), "get", "/v1/account/budget")

    purchase = check(client.post("/v1/credits/topup", json={"credits": 1000}, headers=me),
                     "post", "/v1/credits/topup")["purchase"]  # fmt: skip
    check(client.get("/v1/billing/payments", headers=me), "get", "/v1/billing/payments")
    check(client.get(f"/v1/billing/payments/{purchase['id']}", headers=me),
          "get", "/v1/billing/payments/{purchase_id}")  # fmt: skip
    check(client.post(f"/v1/admin/purchases/{purchase['id']}/confirm", headers=ADMIN,
                      json={"payment_reference": "BANK-1"}),
          "post", "/v1/admin/purchases/{purchase_id}/confirm")  # fmt: skip
    second = client.post("/v1/credits/topup", json={"credits": 1000}, headers=me)
    check(client.post(f"/v1/billing/payments/{second.get_json()['purchase']['id']}/cancel",
                      headers=me), "post", "/v1/billing/payments/{purchase_id}/cancel")  # fmt: skip

    invited = check(client.post("/v1/team/invite", json={"email": "ed@example.com"}, headers=me),
                    "post", "/v1/team/invite")  # fmt: skip
    member = invited["user"]["id"]
    check(client.get("/v1/team", headers=me), "get", "/v1/team")
    check(client.patch(f"/v1/team/{member}", json={"role": "viewer"}, headers=me),
          "patch", "/v1/team/{user_id}")  # fmt: skip
    check(client.post(f"/v1/team/{member}/invitation", headers=me),
          "post", "/v1/team/{user_id}/invitation")  # fmt: skip
    new_key = check(client.post("/v1/keys", json={"name": "ci"}, headers=me), "post", "/v1/keys")
    check(client.get("/v1/keys", headers=me), "get", "/v1/keys")
    check(client.delete(f"/v1/keys/{new_key['id']}", headers=me), "delete", "/v1/keys/{key_id}")
    check(client.delete(f"/v1/team/{member}", headers=me), "delete", "/v1/team/{user_id}")
    keyword_id = added["added"][0]["id"]
    check(client.delete(f"/v1/keywords/{keyword_id}", headers=me),
          "delete", "/v1/keywords/{keyword_id}")  # fmt: skip
    check(client.delete(f"/v1/sites/{site['id']}", headers=me), "delete", "/v1/sites/{site_id}")

    check(client.get("/v1/admin/accounts?email=schemas@", headers=ADMIN),
          "get", "/v1/admin/accounts")  # fmt: skip
    check(client.get(f"/v1/admin/accounts/{account_id}", headers=ADMIN),
          "get", "/v1/admin/accounts/{account_id}")  # fmt: skip
    check(client.get("/v1/admin/jobs?status=succeeded", headers=ADMIN), "get", "/v1/admin/jobs")
    check(client.post(f"/v1/admin/accounts/{account_id}/credits", headers=ADMIN,
                      json={"amount": 5, "reason": "goodwill"}),
          "post", "/v1/admin/accounts/{account_id}/credits")  # fmt: skip
    check(client.get("/v1/admin/purchases", headers=ADMIN), "get", "/v1/admin/purchases")
    check(client.get("/v1/admin/plans", headers=ADMIN), "get", "/v1/admin/plans")
    check(client.get("/v1/admin/usage/daily?days=7", headers=ADMIN), "get", "/v1/admin/usage/daily")
    for part in ("summary", "insights", "logs"):
        check(client.get(f"/v1/admin/accounts/{account_id}/usage/{part}", headers=ADMIN),
              "get", f"/v1/admin/accounts/{{account_id}}/usage/{part}")  # fmt: skip
    check(client.post(f"/v1/admin/accounts/{account_id}/bank-transfer", headers=ADMIN,
                      json={"payment_reference": "BT-1", "amount": "149.00", "payer_name": "Jo"}),
          "post", "/v1/admin/accounts/{account_id}/bank-transfer")  # fmt: skip
    check(client.patch(f"/v1/admin/accounts/{account_id}", json={"status": "active"},
                       headers=ADMIN), "patch", "/v1/admin/accounts/{account_id}")  # fmt: skip
    check(client.post("/v1/admin/keyword-library/import", headers={**ADMIN, "Content-Type":
                      "text/csv"}, data="keyword,country,volume,difficulty\nshoes,us,10,5\n"),
          "post", "/v1/admin/keyword-library/import")  # fmt: skip
    check(client.get("/v1/openapi.json"), "get", "/v1/openapi.json")
    check(client.get("/v1/admin/unbilled-usage", headers=ADMIN), "get", "/v1/admin/unbilled-usage")
    limits = "/v1/admin/provider-limits/{model}"
    check(client.put("/v1/admin/provider-limits/gpt-4o-mini", json={"rpm": 500, "tpm": 200_000},
                     headers=ADMIN), "put", limits)  # fmt: skip
    check(
        client.get("/v1/admin/provider-limits", headers=ADMIN), "get", "/v1/admin/provider-limits"
    )
    check(client.delete("/v1/admin/provider-limits/gpt-4o-mini", headers=ADMIN), "delete", limits)

    wanted = {
        (method, path)
        for path, operations in conform.document["paths"].items()
        for method in operations
        if not path.startswith(("/v1/auth/", "/v1/billing/stripe", "/metrics"))
    }
    # What one account's life here does not reach; each has its own API tests.
    elsewhere = {
        "/v1/keyword-library/add",
        "/v1/team/transfer-ownership",
        "/v1/webhooks/deliveries/{delivery_id}/redeliver",
        "/v1/account/plan",
        "/v1/admin/plans",
        "/v1/admin/plans/{slug}",
        "/v1/admin/purchases/{purchase_id}/fail",
        "/v1/admin/purchases/{purchase_id}/sync",
    }
    assert {path for _, path in wanted - check.seen} <= elsewhere


def test_auth_answers_match_their_schemas(client: Any, conform: Conformance) -> None:
    body = {"email": "auth-schemas@example.com", "password": "correct horse"}
    registered = client.post("/v1/auth/register", json=body)
    conform(registered, "post", "/v1/auth/register")
    conform(client.post("/v1/auth/register", json=body), "post", "/v1/auth/register")  # 409
    conform(client.post("/v1/auth/login", json=body), "post", "/v1/auth/login")
    wrong = client.post("/v1/auth/login", json={**body, "password": "wrong horse"})
    conform(wrong, "post", "/v1/auth/login")
    paid = client.post(
        "/v1/auth/register", json={**body, "email": "p@example.com", "plan": "growth"}
    )
    assert conform(paid, "post", "/v1/auth/register")["purchase"]["status"] == "pending"
    key = registered.get_json()["api_key"]
    conform(client.get("/v1/account", headers=auth(key)), "get", "/v1/account")
    conform(client.get("/v1/account"), "get", "/v1/account")  # 401
    conform(client.get("/v1/jobs/job_nothere", headers=auth(key)), "get", "/v1/jobs/{job_id}")
    conform(client.get("/v1/jobs?limit=0", headers=auth(key)), "get", "/v1/jobs")  # 422


def jobs_of_run(client: Any, headers: dict[str, str], run_id: str) -> str:
    """The (one) job of a clustering-only automation run."""
    page = client.get(f"/v1/jobs?automation_id={run_id}", headers=headers).get_json()
    job_id: str = page["data"][0]["id"]
    return job_id
