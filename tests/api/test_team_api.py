"""The team through the API: removal, roles that protect the owner, invitations, transfer."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from api import security as api_security
from billing import team as billing_team
from billing.accounts import create_api_key
from models import AccountEvent, Invitation, User, utcnow
from models.db import transaction
from tests.support import auth, join_team, on_plan

ADMIN = {"X-Admin-Token": "test-admin-token"}
PASSWORD = "a long password"
ORDER = ["viewer", "editor", "admin", "owner"]


@pytest.fixture(autouse=True)
def _dev_invitations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Development mode: invitation tokens come back to the inviter (and the log)."""
    monkeypatch.setenv("INVITE_TOKENS_IN_RESPONSE", "1")


def invite(client: Any, key: str, email: str, role: str) -> dict[str, Any]:
    response = client.post(
        "/v1/team/invite", json={"email": email, "role": role}, headers=auth(key)
    )
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def accept(client: Any, token: str, password: str = PASSWORD) -> Any:
    return client.post("/v1/auth/accept-invitation", json={"token": token, "password": password})


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return client.post("/v1/auth/login", json={"email": email, "password": password})


joined = join_team  # an invited member who accepted: id, their key and a login token


def seats(client: Any, key: str) -> dict[str, Any]:
    limits: dict[str, Any] = client.get("/v1/account", headers=auth(key)).get_json()["limits"]
    return limits["users"]


# --- removal ----------------------------------------------------------------------------


def test_a_removed_member_is_locked_out_at_once_and_the_seat_frees(client: Any) -> None:
    owner, _ = on_plan(client, "starter")  # 2 users: the owner and one more
    editor = joined(client, owner, "ed@example.com", "editor")
    assert client.get("/v1/account", headers=auth(editor["key"])).status_code == 200
    assert client.get("/v1/account", headers=auth(editor["token"])).status_code == 200
    full = client.post(
        "/v1/team/invite", json={"email": "next@example.com", "role": "viewer"}, headers=auth(owner)
    )
    assert full.status_code == 403
    assert full.get_json()["error"]["limit_name"] == "users"

    removed = client.delete(f"/v1/team/{editor['id']}", headers=auth(owner))

    assert removed.status_code == 200, removed.get_json()
    assert removed.get_json()["removed"]["email"] == "ed@example.com"
    assert removed.get_json()["keys_revoked"] == 1
    for credential in (editor["key"], editor["token"]):
        response = client.get("/v1/account", headers=auth(credential))
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "invalid_api_key"
    assert login(client, "ed@example.com").status_code == 401
    assert seats(client, owner) == {"used": 1, "limit": 2}
    again = invite(client, owner, "next@example.com", "viewer")
    assert again["user"]["status"] == "invited"
    assert seats(client, owner) == {"used": 2, "limit": 2}
    keys = client.get("/v1/keys", headers=auth(owner)).get_json()["data"]
    revoked = [k for k in keys if k["name"] == "ed@example.com (joined)"]
    assert len(revoked) == 1
    assert revoked[0]["revoked_at"] is not None
    assert revoked[0]["user_id"] is None
    with transaction() as session:
        events = session.scalars(select(AccountEvent.type).order_by(AccountEvent.id)).all()
    assert "member_removed" in events


def test_a_removed_email_can_be_invited_again(client: Any) -> None:
    owner, _ = on_plan(client, "starter")
    first = invite(client, owner, "back@example.com", "viewer")
    assert client.delete(f"/v1/team/{first['user']['id']}", headers=auth(owner)).status_code == 200
    second = invite(client, owner, "back@example.com", "editor")
    assert accept(client, first["invitation"]["token"]).status_code == 404
    assert accept(client, second["invitation"]["token"]).status_code == 200


# --- the role matrix ----------------------------------------------------------------------


@pytest.fixture
def team(client: Any) -> dict[str, dict[str, str]]:
    """The owner and two members of every other role, each with a key of their own."""
    owner, _ = on_plan(client, "enterprise")
    members = {"owner": {"key": owner, "id": _own_id(client, owner)}}
    for role in ("admin", "editor", "viewer"):
        for label in (role, role + "2"):
            made = joined(client, owner, f"{label}@example.com", role)
            members[label] = {"key": made["key"], "id": made["id"]}
    keys = client.get("/v1/keys", headers=auth(owner)).get_json()["data"]
    for member in members.values():
        member["key_id"] = next(k["id"] for k in keys if k["user_id"] == member["id"])
    return members


def _own_id(client: Any, key: str) -> str:
    team = client.get("/v1/team", headers=auth(key)).get_json()["data"]
    return str(next(u["id"] for u in team if u["role"] == "owner"))


def allowed(actor: str, target: str) -> bool:
    """Managing the team needs admin or above, and a role above the target's."""
    return ORDER.index(actor) >= ORDER.index("admin") and ORDER.index(actor) > ORDER.index(target)


def act(client: Any, actor: dict[str, str], target: dict[str, str], action: str, role: str) -> Any:
    if action == "remove":
        return client.delete(f"/v1/team/{target['id']}", headers=auth(actor["key"]))
    if action == "change_role":
        new_role = "viewer" if role != "viewer" else "editor"
        return client.patch(
            f"/v1/team/{target['id']}", json={"role": new_role}, headers=auth(actor["key"])
        )
    return client.delete(f"/v1/keys/{target['key_id']}", headers=auth(actor["key"]))


def target_state(client: Any, owner: str, target: dict[str, str]) -> tuple[str | None, bool]:
    """(the target's role or None if gone, whether the target's key still works)."""
    team = client.get("/v1/team", headers=auth(owner)).get_json()["data"]
    role = next((u["role"] for u in team if u["id"] == target["id"]), None)
    works = client.get("/v1/account", headers=auth(target["key"])).status_code == 200
    return role, works


MATRIX = [
    (actor, target, action)
    for actor in ORDER
    for target in ORDER
    for action in ("remove", "change_role", "revoke_key")
    if not actor == target == "owner"  # the owner acting on itself: test_acting_on_yourself
]


@pytest.mark.parametrize(("actor", "target", "action"), MATRIX)
def test_role_matrix(
    client: Any, team: dict[str, dict[str, str]], actor: str, target: str, action: str
) -> None:
    """Every role acting on another member of every role: allowed exactly when the actor
    is admin or above and outranks the target."""
    target_member = team[target + "2" if target == actor else target]
    before = target_state(client, team["owner"]["key"], target_member)

    response = act(client, team[actor], target_member, action, target)

    after = target_state(client, team["owner"]["key"], target_member)
    if allowed(actor, target):
        assert response.status_code == 200, response.get_json()
        expected = {
            "remove": (None, False),
            "change_role": ("viewer" if target != "viewer" else "editor", True),
            "revoke_key": (target, False),
        }[action]
        assert after == expected
    else:
        assert response.status_code == 403, response.get_json()
        assert response.get_json()["error"]["code"] == "forbidden"
        assert after == before == (target, True)


@pytest.mark.parametrize("action", ["remove", "change_role", "revoke_key"])
@pytest.mark.parametrize("actor", ORDER)
def test_acting_on_yourself(
    client: Any, team: dict[str, dict[str, str]], actor: str, action: str
) -> None:
    """Nobody removes or re-roles themselves; admins and the owner may revoke their own
    keys (editors and viewers manage no keys at all)."""
    me = team[actor]
    response = act(client, me, me, action, actor)
    if action == "revoke_key" and actor in ("admin", "owner"):
        assert response.status_code == 200
        assert client.get("/v1/account", headers=auth(me["key"])).status_code == 401
    else:
        assert response.status_code == 403, response.get_json()
        assert target_state(client, team["owner"]["key"], me) == (actor, True)


def test_only_the_owner_makes_admins(client: Any, team: dict[str, dict[str, str]]) -> None:
    admin, owner = team["admin"]["key"], team["owner"]["key"]
    editor = team["editor"]["id"]

    invited = client.post(
        "/v1/team/invite", json={"email": "a3@example.com", "role": "admin"}, headers=auth(admin)
    )
    promoted = client.patch(f"/v1/team/{editor}", json={"role": "admin"}, headers=auth(admin))

    assert invited.status_code == promoted.status_code == 403
    assert "needs owner" in promoted.get_json()["error"]["message"]
    assert (
        client.patch(f"/v1/team/{editor}", json={"role": "admin"}, headers=auth(owner)).status_code
        == 200
    )
    invite(client, owner, "a3@example.com", "admin")


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_nobody_makes_an_owner_except_by_transfer(
    client: Any, team: dict[str, dict[str, str]], who: str
) -> None:
    key = team[who]["key"]
    patched = client.patch(
        f"/v1/team/{team['viewer']['id']}", json={"role": "owner"}, headers=auth(key)
    )
    invited = client.post(
        "/v1/team/invite", json={"email": "o2@example.com", "role": "owner"}, headers=auth(key)
    )
    assert patched.status_code == invited.status_code == 422
    assert "transfer" in patched.get_json()["error"]["message"]


def test_the_owner_is_never_locked_out(client: Any, team: dict[str, dict[str, str]]) -> None:
    """An admin can neither remove, demote nor disarm the owner; the owner, even after
    revoking every key of their own, logs in with the password and makes a new key."""
    owner, admin = team["owner"], team["admin"]
    attempts = [
        client.delete(f"/v1/team/{owner['id']}", headers=auth(admin["key"])),
        client.patch(
            f"/v1/team/{owner['id']}", json={"role": "viewer"}, headers=auth(admin["key"])
        ),
        client.delete(f"/v1/keys/{owner['key_id']}", headers=auth(admin["key"])),
        client.post(
            "/v1/team/transfer-ownership", json={"user_id": admin["id"]}, headers=auth(admin["key"])
        ),
    ]
    assert [r.status_code for r in attempts] == [403] * 4
    assert client.get("/v1/account", headers=auth(owner["key"])).status_code == 200

    assert (
        client.delete(f"/v1/keys/{owner['key_id']}", headers=auth(owner["key"])).status_code == 200
    )
    assert client.get("/v1/account", headers=auth(owner["key"])).status_code == 401
    token = client.post(
        "/v1/auth/login", json={"email": "owner@example.com", "password": "correct horse"}
    ).get_json()["token"]
    fresh = client.post("/v1/keys", json={"name": "again"}, headers=auth(token))
    assert fresh.status_code == 201
    assert client.get("/v1/account", headers=auth(fresh.get_json()["api_key"])).status_code == 200


# --- role changes end login tokens ------------------------------------------------------


def test_a_role_change_ends_the_members_login_tokens(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    editor = joined(client, owner, "ed@example.com", "editor")
    image_job = {"operation": "image_generation", "input": {"prompt": "p"}}
    assert client.post("/v1/jobs", json=image_job, headers=auth(editor["token"])).status_code == 202

    changed = client.patch(f"/v1/team/{editor['id']}", json={"role": "viewer"}, headers=auth(owner))

    assert changed.status_code == 200
    assert changed.get_json()["role"] == "viewer"
    assert client.get("/v1/account", headers=auth(editor["token"])).status_code == 401
    token = login(client, "ed@example.com").get_json()["token"]
    refused = client.post("/v1/jobs", json=image_job, headers=auth(token))
    assert refused.status_code == 403
    assert client.post("/v1/jobs", json=image_job, headers=auth(editor["key"])).status_code == 403
    assert client.get("/v1/jobs", headers=auth(token)).status_code == 200


# --- invitations ------------------------------------------------------------------------


def test_an_invitee_accepts_sets_a_password_and_logs_in(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    made = invite(client, owner, "new@example.com", "editor")
    assert made["user"]["status"] == "invited"
    assert made["invitation"]["token"].startswith("inv_")
    assert login(client, "new@example.com").status_code == 401

    accepted = client.post(
        "/v1/auth/accept-invitation",
        json={"token": made["invitation"]["token"], "password": PASSWORD, "name": "New One"},
    )

    assert accepted.status_code == 200, accepted.get_json()
    body = accepted.get_json()
    assert (body["user"]["status"], body["user"]["name"]) == ("active", "New One")
    assert client.get("/v1/account", headers=auth(body["token"])).status_code == 200
    logged_in = login(client, "new@example.com")
    assert logged_in.status_code == 200
    assert client.get("/v1/account", headers=auth(logged_in.get_json()["token"])).status_code == 200
    team = client.get("/v1/team", headers=auth(owner)).get_json()["data"]
    assert {u["email"]: u["status"] for u in team}["new@example.com"] == "active"


def test_the_member_key_reaches_the_member_only(client: Any) -> None:
    """An inviter who kept a key made for the member could spend as them even after
    being removed: the key is made when the member accepts, and answered to them."""
    owner, _ = on_plan(client, "growth")
    admin = joined(client, owner, "admin@example.com", "admin")
    made = invite(client, admin["key"], "new@example.com", "editor")
    assert "api_key" not in made
    keys = client.get("/v1/keys", headers=auth(owner)).get_json()["data"]
    assert [k for k in keys if k["user_id"] == made["user"]["id"]] == []
    with transaction() as session:  # a key made for the member before this rule
        _, earlier = create_api_key(session, _account_id(client, owner), made["user"]["id"], "old")
    assert client.get("/v1/account", headers=auth(earlier)).status_code == 200

    accepted = accept(client, made["invitation"]["token"])
    client.delete(f"/v1/team/{admin['id']}", headers=auth(owner))

    key = accepted.get_json()["api_key"]
    assert client.get("/v1/account", headers=auth(key)).status_code == 200
    assert client.get("/v1/account", headers=auth(earlier)).status_code == 401
    keys = client.get("/v1/keys", headers=auth(owner)).get_json()["data"]
    member_keys = [k for k in keys if k["user_id"] == made["user"]["id"]]
    assert sorted((k["name"], k["revoked_at"] is None) for k in member_keys) == [
        ("new@example.com (joined)", True), ("old", False),
    ]  # fmt: skip
    assert client.get("/v1/account", headers=auth(admin["key"])).status_code == 401


def _account_id(client: Any, key: str) -> str:
    return str(client.get("/v1/account", headers=auth(key)).get_json()["id"])


def test_a_used_token_is_refused(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    token = invite(client, owner, "new@example.com", "viewer")["invitation"]["token"]
    assert accept(client, token).status_code == 200

    reused = accept(client, token, "another long password")

    assert reused.status_code == 409
    assert reused.get_json()["error"]["code"] == "invitation_used"
    assert login(client, "new@example.com", "another long password").status_code == 401
    assert login(client, "new@example.com").status_code == 200


def test_an_expired_token_is_refused_and_a_new_invitation_works(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    made = invite(client, owner, "late@example.com", "viewer")
    with transaction() as session:  # the clock moves past the invitation's expiry
        session.execute(update(Invitation).values(expires_at=utcnow() - timedelta(seconds=1)))

    expired = accept(client, made["invitation"]["token"])
    reissued = client.post(f"/v1/team/{made['user']['id']}/invitation", headers=auth(owner))

    assert expired.status_code == 410
    assert expired.get_json()["error"]["code"] == "invitation_expired"
    assert login(client, "late@example.com").status_code == 401
    assert reissued.status_code == 201
    assert accept(client, reissued.get_json()["invitation"]["token"]).status_code == 200
    again = client.post(f"/v1/team/{made['user']['id']}/invitation", headers=auth(owner))
    assert again.status_code == 409  # joined: nothing to invite to


def test_a_newer_invitation_replaces_the_older_one(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    made = invite(client, owner, "twice@example.com", "viewer")
    newer = client.post(f"/v1/team/{made['user']['id']}/invitation", headers=auth(owner))

    old = accept(client, made["invitation"]["token"])

    assert old.status_code == 410
    assert "newer" in old.get_json()["error"]["message"]
    assert accept(client, newer.get_json()["invitation"]["token"]).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"token": "inv_unknown", "password": PASSWORD},
        {"token": "", "password": PASSWORD},
        {"token": "inv_x", "password": "short"},
        {"password": PASSWORD},
    ],
)
def test_bad_acceptances_are_refused(client: Any, body: dict[str, Any]) -> None:
    response = client.post("/v1/auth/accept-invitation", json=body)
    assert response.status_code in (404, 422)
    assert response.get_json()["error"]["code"] in ("not_found", "invalid_request")


def test_a_suspended_account_cannot_take_invitations(client: Any) -> None:
    owner, account_id = on_plan(client, "growth")
    token = invite(client, owner, "s@example.com", "viewer")["invitation"]["token"]
    client.patch(f"/v1/admin/accounts/{account_id}", json={"status": "suspended"}, headers=ADMIN)

    refused = accept(client, token)

    assert refused.status_code == 403
    client.patch(f"/v1/admin/accounts/{account_id}", json={"status": "active"}, headers=ADMIN)
    assert accept(client, token).status_code == 200  # the refusal did not use the token


def test_tokens_stay_secret_outside_development(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.team")
    owner, _ = on_plan(client, "growth")
    dev = invite(client, owner, "dev@example.com", "viewer")
    assert dev["invitation"]["token"] in caplog.text
    monkeypatch.setenv("INVITE_TOKENS_IN_RESPONSE", "0")
    caplog.clear()

    prod = invite(client, owner, "prod@example.com", "viewer")

    assert set(prod["invitation"]) == {"id", "user_id", "expires_at"}
    assert "inv_" not in caplog.text
    with transaction() as session:
        hashes = session.scalars(select(Invitation.token_hash)).all()
    assert dev["invitation"]["token"] not in hashes  # stored hashed


# --- an invitation reserves no address ----------------------------------------------------


def sign_up(client: Any, email: str) -> Any:
    return client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})


@pytest.mark.parametrize(
    ("invited_as", "registered_as"),
    [("ceo@bigcorp.com", "CEO@bigcorp.com"), ("c.e.o+team@gmail.com", "ceo@googlemail.com")],
)
def test_an_invitation_does_not_keep_its_address_from_registering(
    client: Any, invited_as: str, registered_as: str
) -> None:
    """Anyone can invite someone else's address; the mailbox's owner still registers, and
    the invitation nobody accepted is withdrawn: gone from the inviter's team, its seat
    free, its link answering as a removed member's does."""
    owner, _ = on_plan(client, "growth")
    made = invite(client, owner, invited_as, "editor")
    assert seats(client, owner)["used"] == 2

    registered = sign_up(client, registered_as)

    assert registered.status_code == 201, registered.get_json()
    team = client.get("/v1/team", headers=auth(owner)).get_json()["data"]
    assert [u["email"] for u in team] == ["owner@example.com"]
    assert seats(client, owner)["used"] == 1
    link = accept(client, made["invitation"]["token"])
    assert link.status_code == 404
    assert link.get_json()["error"]["code"] == "not_found"
    assert (
        client.post(f"/v1/team/{made['user']['id']}/invitation", headers=auth(owner)).status_code
        == 404
    )
    assert login(client, registered_as).status_code == 200
    mine = client.get("/v1/team", headers=auth(registered.get_json()["api_key"])).get_json()
    assert [(u["role"], u["status"]) for u in mine["data"]] == [("owner", "active")]


def test_a_joined_members_address_stays_taken(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    joined(client, owner, "ed@example.com", "editor")

    refused = sign_up(client, "Ed@example.com")

    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "email_taken"
    team = client.get("/v1/team", headers=auth(owner)).get_json()["data"]
    assert {u["email"]: u["status"] for u in team}["ed@example.com"] == "active"


def test_inviting_an_address_with_its_own_account_is_409(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    assert sign_up(client, "ab@gmail.com").status_code == 201

    refused = client.post(
        "/v1/team/invite",
        json={"email": "A.B+work@gmail.com", "role": "editor"},
        headers=auth(owner),
    )

    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "email_taken"
    assert seats(client, owner)["used"] == 1
    with transaction() as session:
        assert session.scalars(select(Invitation.id)).all() == []


# --- an invitation elsewhere blocks nobody ----------------------------------------------


def two_teams(client: Any) -> tuple[str, str]:
    """Two accounts (growth): an owner's API key each."""
    first, _ = on_plan(client, "growth", "first@example.com")
    second, _ = on_plan(client, "growth", "second@example.com")
    return first, second


def emails(client: Any, key: str) -> list[str]:
    return [u["email"] for u in client.get("/v1/team", headers=auth(key)).get_json()["data"]]


def test_an_address_invited_by_one_account_can_be_invited_by_another(client: Any) -> None:
    """Inviting someone first (and reissuing it) no longer keeps every other team from
    inviting them: the pending invitation reserves nothing, the first acceptance takes
    the address, and the other invitation is withdrawn with an event."""
    squatter, team_b = two_teams(client)
    early = invite(client, squatter, "c.e.o+x@gmail.com", "viewer")
    reissued = client.post(f"/v1/team/{early['user']['id']}/invitation", headers=auth(squatter))
    assert reissued.status_code == 201, reissued.get_json()

    real = invite(client, team_b, "ceo@gmail.com", "editor")

    assert real["user"]["status"] == "invited"
    accepted = accept(client, real["invitation"]["token"])
    assert accepted.status_code == 200, accepted.get_json()
    assert emails(client, team_b) == ["second@example.com", "ceo@gmail.com"]
    assert emails(client, squatter) == ["first@example.com"]
    assert seats(client, squatter)["used"] == 1
    for token in (early["invitation"]["token"], reissued.get_json()["invitation"]["token"]):
        link = accept(client, token)
        assert link.status_code == 404
        assert link.get_json()["error"]["code"] == "not_found"
    with transaction() as session:
        withdrawn = session.scalars(
            select(AccountEvent).where(AccountEvent.type == "invitation_withdrawn")
        ).one()
    assert withdrawn.data["user_id"] == early["user"]["id"]
    assert withdrawn.data["reason"] == "joined_another_account"
    logged_in = login(client, "ceo@gmail.com")
    assert logged_in.status_code == 200, logged_in.get_json()
    mine = client.get("/v1/team", headers=auth(logged_in.get_json()["token"]))
    assert mine.status_code == 200
    assert "ceo@gmail.com" in [u["email"] for u in mine.get_json()["data"]]


def test_registering_an_address_invited_by_two_accounts_withdraws_both(client: Any) -> None:
    first, second = two_teams(client)
    made = [invite(client, key, "ceo@bigcorp.com", "viewer") for key in (first, second)]

    assert sign_up(client, "CEO@bigcorp.com").status_code == 201

    assert emails(client, first) == ["first@example.com"]
    assert emails(client, second) == ["second@example.com"]
    for invited in made:
        assert accept(client, invited["invitation"]["token"]).status_code == 404
    assert login(client, "ceo@bigcorp.com").status_code == 200


def test_admin_search_by_email_finds_every_account_of_an_address_once(client: Any) -> None:
    first, second = two_teams(client)
    for key in (first, second):
        invite(client, key, "shared@example.com", "viewer")
    on_plan(client, "growth", "other@example.com")

    found = client.get("/v1/admin/accounts?email=SHARED@example.com", headers=ADMIN)

    assert found.status_code == 200
    ids = [a["id"] for a in found.get_json()["data"]]
    assert len(ids) == len(set(ids)) == 2
    mine = [client.get("/v1/account", headers=auth(k)).get_json()["id"] for k in (first, second)]
    assert set(ids) == set(mine)


def test_an_address_that_joined_a_team_cannot_be_invited_elsewhere(client: Any) -> None:
    first, second = two_teams(client)
    joined(client, first, "ed@example.com", "editor")

    refused = client.post(
        "/v1/team/invite", json={"email": "ED@example.com", "role": "viewer"}, headers=auth(second)
    )

    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert (error["code"], error["reason"], error["field"]) == (
        "email_taken",
        "joined_elsewhere",
        "email",
    )
    assert "one mailbox, one login" in error["message"]
    assert emails(client, second) == ["second@example.com"]
    again = client.post(
        "/v1/team/invite", json={"email": "ed@example.com", "role": "viewer"}, headers=auth(first)
    )
    assert again.status_code == 409
    assert again.get_json()["error"]["reason"] == "already_member"


def test_inviting_an_address_twice_to_one_team_says_to_reissue(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    first = invite(client, owner, "ab@gmail.com", "viewer")

    again = client.post(
        "/v1/team/invite",
        json={"email": "A.B+team@gmail.com", "role": "editor"},
        headers=auth(owner),
    )

    assert again.status_code == 409
    error = again.get_json()["error"]
    assert (error["code"], error["reason"], error["user_id"]) == (
        "email_taken",
        "already_invited",
        first["user"]["id"],
    )
    assert "reissue" in error["message"]
    assert seats(client, owner)["used"] == 2


def test_an_invitation_of_an_address_that_joined_elsewhere_meanwhile_is_409(client: Any) -> None:
    """An invitation that outlived the address's claim (made in the instant another team's
    acceptance was committing, so that acceptance could not withdraw it): accepting it is
    a clear 409 that writes nothing, and login still finds the member who joined."""
    first, second = two_teams(client)
    stale = invite(client, first, "x@example.com", "viewer")
    member = joined(client, second, "y@example.com", "editor")
    with transaction() as session:  # as if `stale` had been invited after the claim
        session.execute(
            update(User)
            .where(User.id == member["id"])
            .values(email="x@example.com", email_normalized="x@example.com")
        )

    refused = accept(client, stale["invitation"]["token"])

    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "email_taken"
    assert refused.get_json()["error"]["reason"] == "email_claimed"
    team = client.get("/v1/team", headers=auth(first)).get_json()["data"]
    assert {u["email"]: u["status"] for u in team}["x@example.com"] == "invited"
    logged_in = login(client, "x@example.com")
    assert logged_in.status_code == 200, logged_in.get_json()
    assert logged_in.get_json()["user"]["id"] == member["id"]


# --- ownership --------------------------------------------------------------------------


def test_the_owner_hands_over_the_account(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    owner_token = login(client, "owner@example.com", "correct horse").get_json()["token"]
    admin = joined(client, owner, "heir@example.com", "admin")

    moved = client.post(
        "/v1/team/transfer-ownership", json={"user_id": admin["id"]}, headers=auth(owner)
    )

    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["owner"]["role"] == "owner"
    assert moved.get_json()["previous_owner"]["role"] == "admin"
    assert client.get("/v1/account", headers=auth(owner_token)).status_code == 401
    assert client.get("/v1/account", headers=auth(admin["token"])).status_code == 401
    back = client.post(
        "/v1/team/transfer-ownership",
        json={"user_id": moved.get_json()["previous_owner"]["id"]},
        headers=auth(owner),
    )
    assert back.status_code == 403
    new_owner = login(client, "heir@example.com").get_json()["token"]
    assert (
        client.patch(
            f"/v1/team/{moved.get_json()['previous_owner']['id']}",
            json={"role": "editor"},
            headers=auth(new_owner),
        ).status_code
        == 200
    )


def test_ownership_goes_only_to_a_member_who_has_joined(client: Any) -> None:
    owner, _ = on_plan(client, "growth")
    pending = invite(client, owner, "pending@example.com", "admin")["user"]["id"]
    me = _own_id(client, owner)
    cases = [(pending, 409), (me, 409), ("usr_missing", 404)]
    for user_id, status in cases:
        response = client.post(
            "/v1/team/transfer-ownership", json={"user_id": user_id}, headers=auth(owner)
        )
        assert response.status_code == status, (user_id, response.get_json())
    roles = {
        u["id"]: u["role"] for u in client.get("/v1/team", headers=auth(owner)).get_json()["data"]
    }
    assert roles[me] == "owner"


def test_team_ids_of_another_account_are_404(client: Any) -> None:
    a_owner, _ = on_plan(client, "growth", "a@example.com")
    a_member = invite(client, a_owner, "am@example.com", "viewer")["user"]["id"]
    b_owner, _ = on_plan(client, "growth", "b@example.com")

    attempts = [
        client.delete(f"/v1/team/{a_member}", headers=auth(b_owner)),
        client.patch(f"/v1/team/{a_member}", json={"role": "editor"}, headers=auth(b_owner)),
        client.post(f"/v1/team/{a_member}/invitation", headers=auth(b_owner)),
        client.post(
            "/v1/team/transfer-ownership", json={"user_id": a_member}, headers=auth(b_owner)
        ),
    ]

    assert [r.status_code for r in attempts] == [404] * 4
    team = client.get("/v1/team", headers=auth(a_owner)).get_json()["data"]
    assert {u["email"]: u["role"] for u in team}["am@example.com"] == "viewer"


# --- a change committed between a request's authentication and its view ----------------


@pytest.mark.parametrize("change", ["removed", "demoted"])
def test_a_key_is_not_made_for_an_admin_removed_or_demoted_meanwhile(
    client: Any, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The owner's change commits after the admin's request read its caller: the key
    creation re-reads the role under the account lock, like every team change, and
    refuses (a removed member's key would point at a deleted user: a 500 before)."""
    owner, _ = on_plan(client, "growth")
    admin = joined(client, owner, "admin@example.com", "admin")

    def meanwhile(account: Any) -> None:
        monkeypatch.setattr(api_security.ratelimit, "enforce", lambda _account: None)  # once
        with transaction() as session:
            actor = session.scalar(
                select(User).where(User.account_id == account.id, User.role == "owner")
            )
            assert actor is not None
            if change == "removed":
                billing_team.remove_member(session, account.id, actor, admin["id"], utcnow())
            else:
                billing_team.change_role(session, account.id, actor, admin["id"], "viewer")

    monkeypatch.setattr(api_security.ratelimit, "enforce", meanwhile)
    made = client.post("/v1/keys", json={"name": "late"}, headers=auth(admin["key"]))

    assert made.status_code == 403, made.get_json()
    assert made.get_json()["error"]["code"] == "forbidden"
    keys = client.get("/v1/keys", headers=auth(owner)).get_json()["data"]
    assert [k for k in keys if k["name"] == "late"] == []
