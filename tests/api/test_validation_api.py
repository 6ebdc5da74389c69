"""Request bodies the API refuses at the parsing layer, before any view or database sees
them: deep nesting, NUL and lone surrogates in any text, NaN, non-UTF-8. Each is a 422
with the JSON error shape on both databases, and nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from api.validation import MAX_JSON_DEPTH
from models import Account, Job, Site
from models.db import transaction
from tests.support import auth

ADMIN = {"X-Admin-Token": "test-admin-token"}
KEYWORDS = {"operation": "clustering", "input": {"keywords": ["running shoes", "trail shoes"]}}

pytestmark = pytest.mark.usefixtures("no_enqueue")


def post_raw(client: Any, path: str, body: str | bytes, headers: dict[str, str]) -> Any:
    return client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})


def counts() -> tuple[int, int, int]:
    with transaction() as session:
        return (
            session.scalar(select(func.count()).select_from(Account)) or 0,
            session.scalar(select(func.count()).select_from(Job)) or 0,
            session.scalar(select(func.count()).select_from(Site)) or 0,
        )


def assert_refused(response: Any, field: str) -> dict[str, Any]:
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["fields"], error
    return error


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_a_body_nested_ten_thousand_deep_is_422_not_a_recursion_error(
    client: Any, key: str, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * 10_000 + "1" + closer * 10_000
    before = counts()

    for path, headers in (("/v1/jobs", auth(key)), ("/v1/auth/register", {})):
        response = post_raw(client, path, deep, headers)
        error = assert_refused(response, "body")
        assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    nested_input = '{"operation": "clustering", "input": ' + deep + "}"
    assert_refused(post_raw(client, "/v1/jobs", nested_input, auth(key)), "body")
    assert counts() == before


def test_depth_counts_structure_not_brackets_inside_strings(client: Any, key: str) -> None:
    """Brackets and escaped quotes inside strings are text; the bound is the real depth."""
    tricky = ["[" * 200, '\\"]]]{{{', "\\\\", '"[[[' * 40]
    body = json.dumps({**KEYWORDS, "input": {"keywords": tricky}})

    assert post_raw(client, "/v1/jobs", body, auth(key)).status_code == 202
    at_bound = "[" * (MAX_JSON_DEPTH - 2) + "1" + "]" * (MAX_JSON_DEPTH - 2)
    within = '{"operation": "clustering", "input": {"keywords": ' + at_bound + "}}"
    error = assert_refused(post_raw(client, "/v1/jobs", within, auth(key)), "input.keywords.0")
    assert "deeper" not in error["message"]  # parsed; refused by the operation's schema


NUL_BODIES = [
    ("/v1/jobs", {**KEYWORDS, "input": {"keywords": ["running\x00shoes"]}}, "input.keywords.0"),
    (
        "/v1/jobs",
        {"operation": "content_generation", "input": {"title": "\x00"}},
        "input.title",
    ),
    ("/v1/jobs", {**KEYWORDS, "webhook_url": "http://example.com/\x00"}, "webhook_url"),
    ("/v1/jobs", {**KEYWORDS, "input": {"key\x00word": ["a"]}}, "input.key?word"),
    ("/v1/sites", {"name": "blog\x00", "domain": "example.com"}, "name"),
    ("/v1/team/invite", {"email": "a@example.com", "name": "\x00"}, "name"),
    ("/v1/keys", {"name": "ci\x00"}, "name"),
    ("/v1/jobs", {**KEYWORDS, "model": "gpt-4o-mini\x00"}, "model"),
]


@pytest.mark.parametrize(("path", "body", "field"), NUL_BODIES)
def test_nul_in_any_text_field_is_422_before_the_database_sees_it(
    client: Any, key: str, path: str, body: dict[str, Any], field: str
) -> None:
    before = counts()
    credits = client.get("/v1/account", headers=auth(key)).get_json()["credits"]

    response = client.post(path, json=body, headers=auth(key))

    error = assert_refused(response, field)
    assert "NUL" in error["message"]
    assert counts() == before
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"] == credits


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/keyword-library?q=%00", "q"),
        ("/v1/keywords?cursor=%00", "cursor"),
        ("/v1/usage/logs?model=gpt%00", "model"),
        ("/v1/jobs?cursor=a%00b", "cursor"),
        ("/v1/automations?cursor=%00", "cursor"),
    ],
)
def test_nul_in_a_query_string_is_422(client: Any, key: str, path: str, field: str) -> None:
    """Found by the fuzzer: `?q=%00` reached PostgreSQL and answered 500."""
    error = assert_refused(client.get(path, headers=auth(key)), field)
    assert "NUL" in error["message"]


def test_nul_at_registration_and_in_admin_bodies(client: Any) -> None:
    before = counts()

    registered = client.post(
        "/v1/auth/register", json={"email": "a@example.com", "password": "long enough\x00"}
    )
    adjusted = client.post(
        "/v1/admin/accounts/acc_x/credits", json={"amount": 5, "reason": "\x00"}, headers=ADMIN
    )

    assert_refused(registered, "password")
    assert_refused(adjusted, "reason")
    assert counts() == before


def test_lone_surrogates_nan_and_non_utf8_bodies_are_422(client: Any, key: str) -> None:
    surrogate = '{"operation": "clustering", "input": {"keywords": ["\\ud800"]}}'
    pair = '{"operation": "clustering", "input": {"keywords": ["\\ud83d\\ude00 shoes"]}}'
    nan = '{"operation": "clustering", "input": {"keywords": ["a"]}, "model": NaN}'
    latin1 = json.dumps({**KEYWORDS, "input": {"keywords": ["café"]}}, ensure_ascii=False)

    assert_refused(post_raw(client, "/v1/jobs", surrogate, auth(key)), "input.keywords.0")
    assert post_raw(client, "/v1/jobs", pair, auth(key)).status_code == 202  # a real emoji
    assert_refused(post_raw(client, "/v1/jobs", nan, auth(key)), "body")
    non_utf8 = post_raw(client, "/v1/jobs", latin1.encode("latin-1"), auth(key))
    assert assert_refused(non_utf8, "body")["message"] == (
        "The request body must be UTF-8 encoded JSON."
    )
