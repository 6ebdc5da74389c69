"""The four limits through the API: the last allowed item succeeds, the next gets the
friendly error, nothing partial is written."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}


def _on_plan(client: Any, plan: str, email: str = "limits@example.com") -> tuple[str, str]:
    key, account = register(client, email)
    response = client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": plan, "status": "active"},
        headers=ADMIN,
    )
    assert response.status_code == 200
    return key, account["id"]


def _set_plan_limits(client: Any, plan: str, **limits: int) -> None:
    response = client.patch(f"/v1/admin/plans/{plan}", json=limits, headers=ADMIN)
    assert response.status_code == 200, response.get_json()


def _site(client: Any, key: str, name: str = "blog") -> str:
    response = client.post("/v1/sites", json={"name": name}, headers=auth(key))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def _limits(client: Any, key: str) -> dict[str, Any]:
    return client.get("/v1/account", headers=auth(key)).get_json()["limits"]


def test_site_limit(client: Any) -> None:
    key, _ = _on_plan(client, "starter")  # 2 sites
    _site(client, key, "one")
    _site(client, key, "two")

    refused = client.post("/v1/sites", json={"name": "three"}, headers=auth(key))

    assert refused.status_code == 403
    error = refused.get_json()["error"]
    assert error["code"] == "limit_reached"
    assert (error["limit_name"], error["current"], error["limit"]) == ("sites", 2, 2)
    assert error["message"].startswith("Site Limit Reached: you have 2 of 2 sites")
    assert "upgrade" in error["message"]
    assert _limits(client, key)["sites"] == {"used": 2, "limit": 2}


def test_user_limit(client: Any) -> None:
    key, _ = _on_plan(client, "starter")  # 2 users, the owner is one
    first = client.post(
        "/v1/team/invite", json={"email": "ed@example.com", "role": "editor"}, headers=auth(key)
    )
    refused = client.post(
        "/v1/team/invite", json={"email": "vi@example.com", "role": "viewer"}, headers=auth(key)
    )

    assert first.status_code == 201
    assert refused.status_code == 403
    assert refused.get_json()["error"]["limit_name"] == "users"
    assert "Team User Limit Reached" in refused.get_json()["error"]["message"]
    team = client.get("/v1/team", headers=auth(key)).get_json()["data"]
    assert [u["email"] for u in team] == ["limits@example.com", "ed@example.com"]


def test_keyword_limit_single_and_bulk_all_or_nothing(client: Any) -> None:
    key, _ = _on_plan(client, "starter")
    _set_plan_limits(client, "starter", max_keywords=5)
    site = _site(client, key)

    bulk = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": ["a", "b", "c", "d"]}, headers=auth(key)
    )
    assert bulk.status_code == 201
    assert len(bulk.get_json()["added"]) == 4

    over = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": ["e", "f"]}, headers=auth(key)
    )
    assert over.status_code == 403
    error = over.get_json()["error"]
    assert (error["current"], error["limit"], error["requested"]) == (4, 5, 2)
    assert error["message"].startswith("Keyword Limit Reached: you have 4 of 5 keywords")
    assert "Delete unused keywords or upgrade your plan" in error["message"]
    assert _limits(client, key)["keywords"] == {"used": 4, "limit": 5}

    last = client.post("/v1/keywords", json={"site_id": site, "keyword": "e"}, headers=auth(key))
    assert last.status_code == 201
    dup = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": ["a", "e"]}, headers=auth(key)
    )
    assert dup.status_code == 201
    assert dup.get_json() == {"added": [], "skipped": ["a", "e"]}
    next_one = client.post(
        "/v1/keywords", json={"site_id": site, "keyword": "f"}, headers=auth(key)
    )
    assert next_one.status_code == 403
    assert _limits(client, key)["keywords"] == {"used": 5, "limit": 5}


def test_deleting_a_keyword_makes_room(client: Any) -> None:
    key, _ = _on_plan(client, "starter")
    _set_plan_limits(client, "starter", max_keywords=1)
    site = _site(client, key)
    added = client.post("/v1/keywords", json={"site_id": site, "keyword": "a"}, headers=auth(key))
    keyword_id = added.get_json()["added"][0]["id"]

    assert client.delete(f"/v1/keywords/{keyword_id}", headers=auth(key)).status_code == 204
    again = client.post("/v1/keywords", json={"site_id": site, "keyword": "b"}, headers=auth(key))
    assert again.status_code == 201


def test_ahrefs_queries_are_counted_and_limited(client: Any) -> None:
    key, _ = _on_plan(client, "starter")
    _set_plan_limits(client, "starter", max_ahrefs_queries=2)

    for used in (1, 2):
        response = client.post(
            "/v1/keyword-research", json={"seed": "running shoes"}, headers=auth(key)
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["queries"] == {"used": used, "limit": 2}
        assert body["keywords"]
        assert all("volume" in k for k in body["keywords"])
    refused = client.post("/v1/keyword-research", json={"seed": "trail"}, headers=auth(key))

    assert refused.status_code == 403
    assert "Keyword Research Query Limit Reached" in refused.get_json()["error"]["message"]
    assert "reset" in refused.get_json()["error"]["message"]
    assert _limits(client, key)["ahrefs_queries"] == {"used": 2, "limit": 2}


def test_ahrefs_limit_zero_asks_for_an_upgrade(client: Any, sim_control: Any) -> None:
    key, _ = register(client)  # free-trial: 0 queries

    refused = client.post("/v1/keyword-research", json={"seed": "x"}, headers=auth(key))

    assert refused.status_code == 403
    assert "Upgrade" in refused.get_json()["error"]["message"]
    assert sim_control.get("/_sim/stats").json()["requests"]["ahrefs"] == 0


def test_failed_research_does_not_count(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = _on_plan(client, "starter")
    monkeypatch.setenv("AHREFS_API_URL", "http://127.0.0.1:1/ahrefs")

    response = client.post("/v1/keyword-research", json={"seed": "x"}, headers=auth(key))

    assert response.status_code == 502
    assert _limits(client, key)["ahrefs_queries"]["used"] == 0


def test_clustering_takes_keyword_ids_from_the_site(client: Any) -> None:
    key, _ = _on_plan(client, "starter")
    site = _site(client, key)
    added = client.post(
        "/v1/keywords",
        json={"site_id": site, "keywords": ["red shoe", "red hat"]},
        headers=auth(key),
    ).get_json()["added"]

    response = client.post(
        "/v1/jobs",
        json={
            "operation": "clustering",
            "site_id": site,
            "input": {"keyword_ids": [k["id"] for k in added]},
        },
        headers=auth(key),
    )
    unknown = client.post(
        "/v1/jobs",
        json={"operation": "clustering", "site_id": site, "input": {"keyword_ids": [999999]}},
        headers=auth(key),
    )

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["input"]["keywords"] == ["red shoe", "red hat"]
    assert unknown.status_code == 404
