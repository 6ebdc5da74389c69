"""GET /v1/openapi.json: a valid OpenAPI 3.1 document that matches what the API does."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}


@pytest.fixture
def document(client: Any) -> dict[str, Any]:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def body_schema(document: dict[str, Any], path: str, method: str) -> Any:
    ref = document["paths"][path][method]["requestBody"]["content"]["application/json"]
    name = ref["schema"]["$ref"].rsplit("/", 1)[-1]
    schema = dict(document["components"]["schemas"][name])
    return OAS31Validator({**schema, "components": document["components"]})


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_every_route_and_method_is_documented_once(app: Any, document: dict[str, Any]) -> None:
    routes = {
        (rule.rule.replace("<int:", "<").replace("<", "{").replace(">", "}"), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented == routes
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("path", "method", "security"),
    [
        ("/v1/jobs", "post", [{"apiKey": []}]),
        ("/v1/account", "get", [{"apiKey": []}]),
        ("/v1/admin/accounts/{account_id}/credits", "post", [{"adminToken": []}]),
        ("/v1/auth/register", "post", []),
        ("/healthz", "get", []),
    ],
)
def test_auth_is_what_the_endpoint_enforces(
    client: Any, document: dict[str, Any], path: str, method: str, security: list[Any]
) -> None:
    assert document["paths"][path][method]["security"] == security
    url = path.replace("{account_id}", "acc_missing")
    response = client.open(url, method=method.upper(), json={})
    assert (response.status_code == 401) == bool(security)


def test_a_valid_submission_matches_the_schema_and_an_invalid_one_does_not(
    client: Any, document: dict[str, Any]
) -> None:
    schema = body_schema(document, "/v1/jobs", "post")
    good = {"operation": "clustering", "input": {"keywords": ["a", "b"]}}
    bad = {"operation": "clustering", "input": {"keywords": ["a"]}, "surprise": 1}
    assert schema.is_valid(good)
    assert not schema.is_valid(bad)
    key, _ = register(client)
    assert client.post("/v1/jobs", json=good, headers=auth(key)).status_code == 202
    assert client.post("/v1/jobs", json=bad, headers=auth(key)).status_code == 422


def test_the_bank_transfer_schema_states_its_limits(document: dict[str, Any]) -> None:
    schema = body_schema(document, "/v1/admin/accounts/{account_id}/bank-transfer", "post")
    payment = {"payment_reference": "BT-1", "amount": "149.00", "payer_name": "Jo"}
    assert schema.is_valid({**payment, "period_months": 24})
    assert not schema.is_valid({**payment, "period_months": 25})
    assert not schema.is_valid({"payment_reference": "BT-1"})


def test_every_documented_body_is_enforced(client: Any, document: dict[str, Any]) -> None:
    """A route that documents a JSON body refuses a body that is not a JSON object."""
    key, account = register(client)
    headers = {**auth(key), **ADMIN}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            url = (
                path.replace("{account_id}", account["id"])
                .replace("{slug}", "growth")
                .replace("{job_id}", "job_x")
            )
            response = client.open(url, method=method.upper(), json=[1, 2], headers=headers)
            assert response.status_code == 422, (method, path, response.get_json())
            assert response.get_json()["error"]["code"] == "invalid_request"
