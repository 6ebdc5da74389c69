"""Abuse-proof sign-up and login: throttles per client address and per email (429 with
Retry-After), a lockout an attacker cannot turn against the owner for long, a daily cap
on free trials per address, and one account per normalised email."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from models import User
from models.db import transaction
from ops.redis_server import RedisServer
from tests.support import auth

PASSWORD = "correct horse"


@pytest.fixture
def throttles_on(
    env: dict[str, str], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The sign-up and login throttles at their defaults, with no counts left over."""
    monkeypatch.setenv("AUTH_THROTTLE_ENABLED", "1")
    store = redis.Redis.from_url(redis_server.url)

    def wipe() -> None:
        keys = list(store.scan_iter("aijobs:auth*"))
        if keys:
            store.delete(*keys)

    wipe()
    yield
    wipe()


def from_address(address: str) -> dict[str, Any]:
    return {"environ_base": {"REMOTE_ADDR": address}}


def register(client: Any, email: str, address: str, **extra: Any) -> Any:
    body = {"email": email, "password": PASSWORD, **extra}
    return client.post("/v1/auth/register", json=body, **from_address(address))


def login(client: Any, email: str, password: str, address: str) -> Any:
    body = {"email": email, "password": password}
    return client.post("/v1/auth/login", json=body, **from_address(address))


def users() -> int:
    with transaction() as session:
        return int(session.scalar(select(func.count()).select_from(User)) or 0)


def test_fifty_sign_ups_from_one_address_in_a_minute(client: Any, throttles_on: None) -> None:
    answers = [register(client, f"office{n}@example.com", "203.0.113.7") for n in range(50)]
    codes = [a.status_code for a in answers]

    # The defaults: 10 free trials per address a day, 20 sign-up attempts an hour.
    assert codes == [201] * 10 + [429] * 40
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers[10:])
    assert {a.get_json()["error"]["code"] for a in answers[10:]} == {"rate_limited"}
    assert "free trials" in answers[10].get_json()["error"]["message"]
    assert "sign-ups from your network" in answers[-1].get_json()["error"]["message"]
    assert users() == 10  # a refused sign-up leaves no account behind
    key = answers[0].get_json()["api_key"]
    assert client.get("/v1/account", headers=auth(key)).status_code == 200
    assert register(client, "elsewhere@example.com", "198.51.100.20").status_code == 201


def test_a_paid_plan_signs_up_after_the_free_trials_run_out(
    client: Any, throttles_on: None
) -> None:
    trials = [register(client, f"t{n}@example.com", "203.0.113.8").status_code for n in range(11)]
    paid = register(client, "buyer@example.com", "203.0.113.8", plan="starter")

    assert trials == [201] * 10 + [429]
    assert paid.status_code == 201
    assert paid.get_json()["account"]["status"] == "pending_payment"


def test_one_email_cannot_be_tried_over_and_over(client: Any, throttles_on: None) -> None:
    codes = [
        register(client, "Same.Person+n@gmail.com", f"198.51.100.{n}").status_code for n in range(7)
    ]
    assert codes == [201, 409, 409, 409, 409, 429, 429]  # 5 attempts an hour per mailbox


def test_twenty_wrong_passwords_lock_that_address_out_briefly(
    client: Any, throttles_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGIN_LOCKOUT_SECONDS", "1")
    monkeypatch.setenv("LOGIN_LOCKOUT_MAX_SECONDS", "2")
    owner, attacker = "192.0.2.10", "192.0.2.66"
    assert register(client, "victim@example.com", owner).status_code == 201
    assert login(client, "victim@example.com", PASSWORD, owner).status_code == 200

    answers = [login(client, "victim@example.com", f"guess {n}", attacker) for n in range(20)]
    codes = [a.status_code for a in answers]

    assert codes[:6] == [401] * 5 + [429]
    assert set(codes) == {401, 429}
    assert codes.count(429) >= 10  # locked out far more often than allowed to guess
    locked = [a for a in answers if a.status_code == 429]
    assert all(1 <= int(a.headers["Retry-After"]) <= 2 for a in locked)
    # The owner, at their own address, is not locked out by someone else's guessing.
    assert login(client, "victim@example.com", PASSWORD, owner).status_code == 200

    deadline = time.monotonic() + 15
    while (response := login(client, "victim@example.com", PASSWORD, attacker)).status_code == 429:
        assert time.monotonic() < deadline, "the lockout did not end"
        time.sleep(int(response.headers["Retry-After"]))
    assert response.status_code == 200  # the right password works again after the lockout


def test_a_spread_out_attack_cannot_lock_the_owner_out_of_a_known_address(
    client: Any, throttles_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGIN_FAILURES_PER_EMAIL", "10/minute")
    assert register(client, "ceo@example.com", "192.0.2.1").status_code == 201
    assert login(client, "ceo@example.com", PASSWORD, "192.0.2.1").status_code == 200

    codes = [
        login(client, "ceo@example.com", "wrong", f"10.9.{n}.1").status_code for n in range(15)
    ]

    assert codes == [401] * 10 + [429] * 5
    assert login(client, "ceo@example.com", PASSWORD, "10.99.0.1").status_code == 429
    assert login(client, "ceo@example.com", PASSWORD, "192.0.2.1").status_code == 200


def test_a_second_trial_for_the_same_gmail_mailbox_is_refused(client: Any) -> None:
    first = register(client, "ab@gmail.com", "192.0.2.30")
    answers = [
        register(client, email, "192.0.2.30")
        for email in ("A.B+x@gmail.com", "a.b@googlemail.com", "AB@GMAIL.COM")
    ]

    assert first.status_code == 201
    assert [a.status_code for a in answers] == [409, 409, 409]
    assert {a.get_json()["error"]["code"] for a in answers} == {"email_taken"}
    assert register(client, "a.b+x@example.com", "192.0.2.30").status_code == 201
    assert register(client, "a.b+y@example.com", "192.0.2.30").status_code == 201


def test_behind_a_trusted_proxy_the_forwarded_address_counts(
    env: dict[str, str], throttles_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.app import create_app

    monkeypatch.setenv("TRIALS_PER_ADDRESS_PER_DAY", "1")
    monkeypatch.setenv("TRUSTED_PROXIES", "1")
    behind_proxy = create_app().test_client()
    monkeypatch.setenv("TRUSTED_PROXIES", "0")
    direct = create_app().test_client()

    def via(client: Any, email: str, forwarded: str) -> int:
        body = {"email": email, "password": PASSWORD}
        headers = {"X-Forwarded-For": forwarded}
        response = client.post("/v1/auth/register", json=body, headers=headers)
        return int(response.status_code)

    assert [via(behind_proxy, f"p{n}@example.com", f"198.51.100.{n}") for n in range(3)] == [
        201
    ] * 3
    # Not trusted: a client cannot pick its own address with the header.
    assert [via(direct, f"d{n}@example.com", f"198.51.100.{n + 10}") for n in range(2)] == [
        201,
        429,
    ]
