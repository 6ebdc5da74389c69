"""GET /v1/openapi.json: a valid OpenAPI 3.1 document that matches what the API does."""

from __future__ import annotations

import re
from pathlib import Path
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
        (re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
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
            url = re.sub(
                r"{\w+}",
                "usr_x1",
                path.replace("{account_id}", account["id"]).replace("{slug}", "growth"),
            )
            response = client.open(url, method=method.upper(), json=[1, 2], headers=headers)
            assert response.status_code == 422, (method, path, response.get_json())
            assert response.get_json()["error"]["code"] == "invalid_request"


def test_every_query_parameter_a_view_reads_is_documented(
    app: Any, document: dict[str, Any]
) -> None:
    """Views read the query string only through `query_params` models, and every field
    of those models is a documented parameter (so documenting is validating)."""
    api = Path(__file__).resolve().parents[2] / "api"
    readers = [
        f"{path.name}:{number}"
        for path in sorted(api.glob("*.py"))
        if path.name != "validation.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "request.args" in line
    ]
    assert readers == [], "read the query through @query_params(Model): " + ", ".join(readers)
    for rule in app.url_map.iter_rules():
        model = getattr(app.view_functions[rule.endpoint], "openapi_query", None)
        if model is None:
            continue
        path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
        documented = {
            p["name"]: p
            for p in document["paths"][path]["get"]["parameters"]
            if p.get("in") == "query"
        }
        names = {field.alias or name for name, field in model.model_fields.items()}
        assert names == set(documented), (path, names ^ set(documented))
        assert all("type" in p["schema"] or "anyOf" in p["schema"] for p in documented.values())


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/v1/jobs", {"status", "operation", "limit", "cursor"}),
        ("/v1/usage/logs", {"operation", "site_id", "model", "from", "to", "format", "limit"}),
        ("/v1/usage/insights", {"days", "from", "to"}),
        ("/v1/admin/accounts", {"email", "status", "plan", "cursor", "limit"}),
        ("/v1/admin/jobs", {"status", "account_id", "operation"}),
        ("/v1/keyword-library", {"q", "country", "volume_min", "difficulty_max"}),
        ("/v1/sites", {"include_deleted"}),
    ],
)
def test_listing_parameters_carry_types_and_bounds(
    document: dict[str, Any], path: str, names: set[str]
) -> None:
    parameters = {
        p["name"]: p["schema"] for p in document["paths"][path]["get"]["parameters"] if "name" in p
    }
    assert names <= set(parameters)
    if "limit" in parameters:
        assert parameters["limit"]["type"] == "integer"
        assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, 100)
    if "status" in parameters:
        assert parameters["status"]["enum"]
    assert "X-Request-Id" in document["components"]["parameters"]["RequestId"]["name"]


def test_submissions_document_the_idempotency_key(document: dict[str, Any]) -> None:
    submit = document["paths"]["/v1/jobs"]["post"]
    header = next(p for p in submit["parameters"] if p.get("name") == "Idempotency-Key")
    assert header["in"] == "header"
    assert header["schema"]["maxLength"] == 255
    assert {"Location", "Idempotent-Replayed"} <= set(submit["responses"]["202"]["headers"])


def test_job_input_is_a_schema_per_operation(document: dict[str, Any]) -> None:
    """`operation` picks the variant; each variant's `input` is that operation's model,
    with examples, and `model` one of its type's models."""
    from billing.operations import OPERATIONS

    schemas = document["components"]["schemas"]
    body = schemas["SubmitBody"]
    assert body["discriminator"]["propertyName"] == "operation"
    assert set(body["discriminator"]["mapping"]) == set(OPERATIONS)
    for name, ref in body["discriminator"]["mapping"].items():
        variant = schemas[ref.rsplit("/", 1)[-1]]
        assert variant["properties"]["operation"]["const"] == name
        input_schema = schemas[variant["properties"]["input"]["$ref"].rsplit("/", 1)[-1]]
        assert input_schema["title"] == OPERATIONS[name].input_model.__name__
        assert variant["examples"], name
        validator = OAS31Validator({**variant, "components": document["components"]})
        for example in variant["examples"]:
            assert validator.is_valid(example), (name, example)
        models = variant["properties"]["model"]["anyOf"][0]["enum"]
        assert models, name
    image = schemas[body["discriminator"]["mapping"]["image_generation"].rsplit("/", 1)[-1]]
    assert "hidream-full" in image["properties"]["model"]["anyOf"][0]["enum"]
    assert "gpt-4o" not in image["properties"]["model"]["anyOf"][0]["enum"]


def test_the_examples_are_accepted(client: Any, document: dict[str, Any]) -> None:
    """Each operation's example body is a job the API takes."""
    key, _ = register(client, "examples@example.com")
    schemas = document["components"]["schemas"]
    for ref in schemas["SubmitBody"]["discriminator"]["mapping"].values():
        for example in schemas[ref.rsplit("/", 1)[-1]]["examples"]:
            response = client.post("/v1/jobs/estimate", json=example, headers=auth(key))
            assert response.status_code == 200, (example, response.get_json())
