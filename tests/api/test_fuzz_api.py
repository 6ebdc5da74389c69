"""Property: whatever JSON arrives at any endpoint, the answer is never a 500, every
error is the JSON error shape, and a refused request leaves the ledger clean."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.audit import audit
from models.db import transaction
from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
KNOWN_KEYS = [
    "operation",
    "input",
    "keywords",
    "keyword",
    "site_id",
    "model",
    "webhook_url",
    "email",
    "password",
    "name",
    "amount",
    "reason",
    "status",
    "plan",
    "role",
    "credits",
    "payment_reference",
    "payer_name",
    "period_months",
    "seed",
    "limit",
    "count",
    "prompt",
    "title",
    "text",
    "cluster",
    "word_count",
    "slug",
    "price",
    "timezone",
    "override_reason",
    "token",
    "user_id",
    "ids",
    "domain",
    "volume",
    "difficulty",
    "cpc",
    "country",
    "monthly_credits",
    "per_operation",
    "method",
    "stages",
    "options",
    "keyword_ids",
    "max_clusters",
    "ideas_per_cluster",
    "models",
]
bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=6),
    st.fixed_dictionaries(
        {
            "operation": st.sampled_from(
                [
                    "clustering",
                    "idea_generation",
                    "content_generation",
                    "image_prompt_extraction",
                    "image_generation",
                    "x",
                ]
            ),
            "input": st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=4),
        }
    ),
)
ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)

# A valid body per endpoint: the fuzzer keeps, drops or garbles each field.
ENDPOINTS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("post", "/v1/auth/register", None, {"email": "n@example.com", "password": "long enough"}),
    (
        "post",
        "/v1/auth/register",
        None,
        {"email": "p@example.com", "password": "long enough", "plan": "starter"},
    ),
    ("post", "/v1/auth/login", None, {"email": "fuzz@example.com", "password": "correct horse"}),
    ("post", "/v1/jobs", "key", {"operation": "image_generation", "input": {"prompt": "p"}}),
    (
        "post",
        "/v1/jobs",
        "key",
        {"operation": "content_generation", "input": {"title": "t", "word_count": 300}},
    ),
    (
        "post",
        "/v1/jobs",
        "key",
        {"operation": "idea_generation", "input": {"cluster": {"name": "c", "keywords": ["k"]}}},
    ),
    ("post", "/v1/jobs/{id}/cancel", "key", {}),
    ("get", "/v1/jobs/{id}", "key", {}),
    ("post", "/v1/sites", "key", {"name": "blog", "domain": "example.com"}),
    ("post", "/v1/keywords", "key", {"site_id": "site_x", "keywords": ["a", "b"]}),
    ("post", "/v1/keyword-research", "key", {"seed": "shoes", "limit": 5}),
    ("post", "/v1/team/invite", "key", {"email": "t@example.com", "role": "viewer"}),
    ("post", "/v1/keys", "key", {"name": "ci"}),
    ("delete", "/v1/keys/{id}", "key", {}),
    ("put", "/v1/ai-settings", "key", {"operation": "clustering", "model": "gpt-4o"}),
    ("post", "/v1/credits/topup", "key", {"credits": 1000}),
    ("post", "/v1/account/plan", "key", {"plan": "growth"}),
    (
        "put",
        "/v1/account/budget",
        "key",
        {"monthly_credits": 500, "per_operation": {"clustering": 9}},
    ),
    ("post", "/v1/billing/stripe/webhook", None, {"type": "checkout.session.completed"}),
    ("post", "/v1/admin/purchases/{id}/confirm", "admin", {"payment_reference": "r"}),
    ("post", "/v1/admin/purchases/{id}/fail", "admin", {"reason": "bounced"}),
    ("post", "/v1/admin/accounts/{account}/credits", "admin", {"amount": 5, "reason": "r"}),
    ("patch", "/v1/admin/accounts/{account}", "admin", {"status": "active", "plan": "growth"}),
    (
        "post",
        "/v1/admin/accounts/{account}/bank-transfer",
        "admin",
        {"payment_reference": "b", "amount": "10.00", "payer_name": "p", "period_months": 1},
    ),
    ("post", "/v1/admin/plans", "admin", {"slug": "p1", "name": "P", "price": "1.00"}),
    ("patch", "/v1/admin/plans/{id}", "admin", {"max_sites": 3}),
    ("put", "/v1/webhooks/endpoint", "key", {"url": "https://hooks.example.com/in"}),
    ("post", "/v1/jobs/estimate", "key", {"operation": "clustering", "input": {"keywords": ["a"]}}),
    ("patch", "/v1/account", "key", {"timezone": "Europe/Paris"}),
    (
        "post",
        "/v1/admin/accounts/{account}/bank-transfer",
        "admin",
        {"payment_reference": "o", "amount": "1.00", "payer_name": "p", "override_reason": "r"},
    ),
    ("patch", "/v1/team/{id}", "key", {"role": "viewer"}),
    ("delete", "/v1/team/{id}", "key", {}),
    ("post", "/v1/team/{id}/invitation", "key", {}),
    ("post", "/v1/team/transfer-ownership", "key", {"user_id": "usr_x"}),
    ("post", "/v1/auth/accept-invitation", None, {"token": "inv_x", "password": "long enough"}),
    ("patch", "/v1/sites/{id}", "key", {"name": "renamed", "domain": None}),
    ("delete", "/v1/sites/{id}", "key", {}),
    ("post", "/v1/keyword-library/add", "key", {"site_id": "site_x", "ids": [1, 2]}),
    (
        "post",
        "/v1/keywords",
        "key",
        {"site_id": "site_x", "keywords": [{"keyword": "k", "volume": 10, "cpc": "0.50"}]},
    ),
    ("post", "/v1/admin/keyword-library/import", "admin", {"keyword": "k", "country": "us"}),
    ("put", "/v1/admin/provider-limits/{id}", "admin", {"rpm": 60, "tpm": 0}),
    (
        "post",
        "/v1/automations",
        "key",
        {"keywords": ["a", "b"], "stages": ["clustering"], "options": {"max_clusters": 1}},
    ),
    (
        "post",
        "/v1/automations/estimate",
        "key",
        {"keyword_ids": [1], "options": {"ideas_per_cluster": 2, "word_count": 300}},
    ),
]


def test_every_endpoint_that_takes_a_body_is_fuzzed(client: Any) -> None:
    """The OpenAPI document lists the bodies the API reads; each one is in ENDPOINTS."""
    document = client.get("/v1/openapi.json").get_json()
    with_body = {
        (method, re.sub(r"{\w+}", "{}", path))
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    fuzzed = {(method, re.sub(r"{\w+}", "{}", path)) for method, path, _, _ in ENDPOINTS}
    assert with_body - fuzzed == set()


# GET endpoints the fuzzed query strings also go to, after each request.
LISTINGS = (
    "/v1/jobs", "/v1/credits/transactions", "/v1/keywords", "/v1/usage/logs",
    "/v1/usage/insights", "/v1/clusters", "/v1/keyword-library",
)  # fmt: skip


@st.composite
def near_valid(draw: st.DrawFn, template: dict[str, Any]) -> Any:
    body: dict[str, Any] = {}
    for name, value in template.items():
        choice = draw(st.sampled_from(["keep", "keep", "drop", "garble"]))
        if choice == "keep":
            body[name] = value
        elif choice == "garble":
            body[name] = draw(json_values)
    if draw(st.booleans()):
        body[draw(st.sampled_from(KNOWN_KEYS))] = draw(json_values)
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[tuple[str, str, str | None], Any]:
    method, template, who, example = draw(st.sampled_from(ENDPOINTS))
    body = draw(st.one_of(near_valid(example), near_valid(example), bodies))
    return (method, template, who), body


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    request=requests(),
    path_id=ids,
    query=st.dictionaries(
        st.sampled_from(
            [
                "limit",
                "cursor",
                "status",
                "operation",
                "days",
                "from",
                "to",
                "format",
                "site_id",
                "q",
                "country",
                "volume_min",
                "difficulty_max",
            ]
        ),
        st.text(max_size=10),
        max_size=3,
    ),
)
def test_no_input_makes_a_500(
    client: Any,
    request: tuple[tuple[str, str, str | None], Any],
    path_id: str,
    query: dict[str, str],
) -> None:
    (method, template, who), body = request
    key, account = _caller(client)
    headers = {"key": auth(key), "admin": ADMIN}.get(who or "", {})
    path = template.format(id=quote(path_id, safe=""), account=account)

    response = getattr(client, method)(path, json=body, headers=headers, query_string=query)

    assert response.status_code < 500, (method, path, body, response.get_json())
    if response.status_code >= 400:
        error = response.get_json()["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert error["message"]
    for listing in LISTINGS:
        listed = client.get(listing, headers=auth(key), query_string=query)
        assert listed.status_code in (200, 404, 422), (listing, query, listed.get_json())
    with transaction() as session:
        assert audit(session) == []


def _caller(client: Any) -> tuple[str, str]:
    """One account per test run, kept on its client (the db is wiped between tests)."""
    if not hasattr(client, "fuzz_caller"):
        key, account = register(client, "fuzz@example.com")
        client.patch(
            f"/v1/admin/accounts/{account['id']}",
            json={"plan": "scale", "status": "active"},
            headers=ADMIN,
        )
        client.fuzz_caller = (key, account["id"])
    caller: tuple[str, str] = client.fuzz_caller
    return caller
