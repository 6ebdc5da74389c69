"""Sites through the API: deletion frees the site and its keyword count and keeps the
history; rename; who may do it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import auth, join_team, on_plan

ADMIN = {"X-Admin-Token": "test-admin-token"}
IMAGE_JOB = {"operation": "image_generation", "input": {"prompt": "a lighthouse"}}


def on_starter(client: Any, email: str = "sites@example.com") -> str:
    return on_plan(client, "starter", email)[0]


def site(client: Any, key: str, name: str) -> str:
    response = client.post("/v1/sites", json={"name": name}, headers=auth(key))
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def limits(client: Any, key: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/v1/account", headers=auth(key)).get_json()["limits"]
    return body


def test_deleting_a_site_frees_its_keywords_and_the_site_limit(client: Any) -> None:
    key = on_starter(client)  # 2 sites, 1,000 keywords
    blog, shop = site(client, key, "blog"), site(client, key, "shop")
    client.post(
        "/v1/keywords", json={"site_id": blog, "keywords": ["a", "b", "c"]}, headers=auth(key)
    )
    client.post("/v1/keywords", json={"site_id": shop, "keywords": ["d"]}, headers=auth(key))
    job = client.post("/v1/jobs", json={**IMAGE_JOB, "site_id": blog}, headers=auth(key)).get_json()
    assert limits(client, key)["sites"] == {"used": 2, "limit": 2}
    assert limits(client, key)["keywords"]["used"] == 4

    deleted = client.delete(f"/v1/sites/{blog}", headers=auth(key))

    assert deleted.status_code == 200, deleted.get_json()
    body = deleted.get_json()
    assert body["keywords_deleted"] == 3
    assert (body["site"]["status"], body["site"]["deleted_at"] is not None) == ("deleted", True)
    assert limits(client, key)["sites"] == {"used": 1, "limit": 2}
    assert limits(client, key)["keywords"]["used"] == 1
    remaining = client.get("/v1/keywords", headers=auth(key)).get_json()["data"]
    assert [k["keyword"] for k in remaining] == ["d"]
    # history: the job keeps its site, which still resolves, marked deleted
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(key)).get_json()["site_id"] == blog
    shown = client.get(f"/v1/sites/{blog}", headers=auth(key)).get_json()
    assert (shown["name"], shown["status"]) == ("blog", "deleted")
    listed = [s["id"] for s in client.get("/v1/sites", headers=auth(key)).get_json()["data"]]
    assert listed == [shop]
    everything = client.get("/v1/sites?include_deleted=true", headers=auth(key)).get_json()["data"]
    assert [s["id"] for s in everything] == [blog, shop]
    # the freed seat takes a new site
    site(client, key, "third")


def test_a_deleted_site_takes_nothing_new(client: Any) -> None:
    key = on_starter(client)
    blog = site(client, key, "blog")
    assert client.delete(f"/v1/sites/{blog}", headers=auth(key)).status_code == 200

    attempts = [
        client.delete(f"/v1/sites/{blog}", headers=auth(key)),
        client.patch(f"/v1/sites/{blog}", json={"name": "x"}, headers=auth(key)),
        client.post("/v1/keywords", json={"site_id": blog, "keyword": "k"}, headers=auth(key)),
        client.post("/v1/jobs", json={**IMAGE_JOB, "site_id": blog}, headers=auth(key)),
        client.post(
            "/v1/keyword-library/add", json={"site_id": blog, "ids": [1]}, headers=auth(key)
        ),
    ]

    assert [r.status_code for r in attempts] == [404] * len(attempts)
    assert attempts[3].get_json()["error"]["code"] == "not_found"
    balance = client.get("/v1/account", headers=auth(key)).get_json()["credits"]
    assert balance["reserved"] == 0


def test_rename_and_change_the_domain(client: Any) -> None:
    key = on_starter(client)
    blog = site(client, key, "blog")

    renamed = client.patch(
        f"/v1/sites/{blog}",
        json={"name": "Blog 2", "domain": "blog.example.com"},
        headers=auth(key),
    )
    cleared = client.patch(f"/v1/sites/{blog}", json={"domain": None}, headers=auth(key))
    empty = client.patch(f"/v1/sites/{blog}", json={}, headers=auth(key))
    blank = client.patch(f"/v1/sites/{blog}", json={"name": ""}, headers=auth(key))
    spaces = client.patch(f"/v1/sites/{blog}", json={"name": " \t "}, headers=auth(key))
    made_blank = client.post("/v1/sites", json={"name": "\u3000"}, headers=auth(key))
    trimmed = client.post("/v1/sites", json={"name": "  shop "}, headers=auth(key))

    assert renamed.status_code == 200
    assert (renamed.get_json()["name"], renamed.get_json()["domain"]) == (
        "Blog 2",
        "blog.example.com",
    )
    assert (cleared.get_json()["name"], cleared.get_json()["domain"]) == ("Blog 2", None)
    assert empty.status_code == blank.status_code == spaces.status_code == 422
    assert made_blank.status_code == 422
    assert trimmed.get_json()["name"] == "shop"


@pytest.mark.parametrize("role", ["editor", "viewer"])
def test_only_admins_and_the_owner_delete_or_rename(client: Any, role: str) -> None:
    owner = on_starter(client)
    blog = site(client, owner, "blog")
    member = join_team(client, owner, "m@example.com", role)["key"]

    deleted = client.delete(f"/v1/sites/{blog}", headers=auth(member))
    renamed = client.patch(f"/v1/sites/{blog}", json={"name": "x"}, headers=auth(member))

    assert deleted.status_code == renamed.status_code == 403
    assert client.get(f"/v1/sites/{blog}", headers=auth(owner)).get_json()["status"] == "active"


def test_another_accounts_site_is_404(client: Any) -> None:
    a_key = on_starter(client, "a@example.com")
    blog = site(client, a_key, "blog")
    client.post("/v1/keywords", json={"site_id": blog, "keyword": "k"}, headers=auth(a_key))
    b_key = on_starter(client, "b@example.com")

    deleted = client.delete(f"/v1/sites/{blog}", headers=auth(b_key))
    renamed = client.patch(f"/v1/sites/{blog}", json={"name": "x"}, headers=auth(b_key))

    assert deleted.status_code == renamed.status_code == 404
    assert client.get(f"/v1/sites/{blog}", headers=auth(a_key)).get_json()["name"] == "blog"
    assert limits(client, a_key)["keywords"]["used"] == 1
