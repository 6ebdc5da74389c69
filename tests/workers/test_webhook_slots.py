"""The per-endpoint webhook cap (workers/webhook_slots.py) on a real Redis: the cap, what
counts as one endpoint, release, a dead holder's lease running out, many threads racing
for the last slots, and attempts that go ahead when Redis is gone."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from settings import get_settings
from workers import webhook_slots
from workers.webhook_slots import endpoint, take

TENANT = "acc_slots"


@pytest.fixture
def url(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A receiver URL of its own (so slots do not leak between tests), and our Redis."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return f"https://hooks-{uuid.uuid4().hex[:8]}.example.com/in"


def client() -> redis.Redis:
    return webhook_slots._redis(get_settings().redis_url)


def held(url: str) -> int:
    return int(client().zcard(webhook_slots.key(url, TENANT)))


def test_one_endpoint_is_scheme_host_and_port() -> None:
    assert endpoint("https://Hooks.Example.com/a?x=1") == "https://hooks.example.com:443"
    assert endpoint("https://hooks.example.com:443/b") == "https://hooks.example.com:443"
    assert endpoint("https://hooks.example.com./b") == "https://hooks.example.com:443"
    assert endpoint("http://hooks.example.com/a") == "http://hooks.example.com:80"
    assert endpoint("http://hooks.example.com:8080/a") == "http://hooks.example.com:8080"
    assert endpoint("http://user@[::1]:9000/x") == "http://[::1]:9000"
    assert endpoint("http://hooks.example.com:99999/") == "http://hooks.example.com:0"


def test_at_most_cap_slots_per_endpoint(url: str) -> None:
    slots = [take(url, tenant=TENANT, cap=2, lease=30) for _ in range(3)]

    assert [slot is not None for slot in slots] == [True, True, False]
    # Another path on the same endpoint shares its slots; another port does not.
    assert take(url.replace("/in", "/other"), tenant=TENANT, cap=2, lease=30) is None
    assert take(url.replace(".com/", ".com:8443/"), tenant=TENANT, cap=2, lease=30) is not None
    assert held(url) == 2


def test_each_tenant_has_its_own_slots_and_parked_list_at_one_endpoint(url: str) -> None:
    """Many tenants send to the same receiver hosts: one tenant's full slots there park
    only its own deliveries, and its released slot wakes only its own."""
    mine = take(url, tenant="acc_busy", cap=1, lease=30)
    assert mine is not None
    assert take(url, tenant="acc_busy", cap=1, lease=30, park="whd_busy") is None

    theirs = take(url, tenant="acc_other", cap=1, lease=30, park="whd_other")

    assert theirs is not None  # not parked behind the busy tenant
    assert webhook_slots.release(theirs) is None  # the busy tenant's delivery stays put
    assert webhook_slots.release(mine) == "whd_busy"


def test_a_released_slot_is_free_at_once(url: str) -> None:
    first = take(url, tenant=TENANT, cap=1, lease=30)
    assert first is not None
    assert take(url, tenant=TENANT, cap=1, lease=30) is None

    webhook_slots.release(first)

    assert take(url, tenant=TENANT, cap=1, lease=30) is not None
    webhook_slots.release(first)  # releasing twice takes nothing from the new holder
    assert take(url, tenant=TENANT, cap=1, lease=30) is None


def test_a_dead_holders_slot_frees_itself_when_its_lease_ends(url: str) -> None:
    assert (
        take(url, tenant=TENANT, cap=1, lease=0.3) is not None
    )  # its worker is killed: never released
    assert take(url, tenant=TENANT, cap=1, lease=0.3) is None

    time.sleep(0.4)

    assert take(url, tenant=TENANT, cap=1, lease=30) is not None
    assert held(url) == 1  # the dead lease was cleaned up, not just outnumbered
    ttl = client().pttl(webhook_slots.key(url, TENANT))
    assert 25_000 < ttl <= 30_000  # an idle endpoint's key goes away by itself


def test_threads_racing_for_the_slots_get_exactly_cap(url: str) -> None:
    got: list[bool] = []
    start = threading.Barrier(20)

    def attempt() -> None:
        start.wait()
        got.append(take(url, tenant=TENANT, cap=4, lease=30) is not None)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(got) == [False] * 16 + [True] * 4


def test_a_full_endpoint_parks_in_the_same_step_and_a_release_hands_over_the_oldest(
    url: str,
) -> None:
    held_slot = take(url, tenant=TENANT, cap=1, lease=30)
    assert held_slot is not None

    assert take(url, tenant=TENANT, cap=1, lease=30, park="whd_first") is None
    assert take(url, tenant=TENANT, cap=1, lease=30, park="whd_second") is None
    assert take(url, tenant=TENANT, cap=1, lease=30) is None  # asking without parking parks nothing

    assert webhook_slots.release(held_slot) == "whd_first"
    assert held(url) == 0
    again = take(url, tenant=TENANT, cap=1, lease=30)
    assert again is not None
    assert webhook_slots.release(again) == "whd_second"
    assert webhook_slots.release(again) is None  # nobody left, nothing given twice
    ttl = client().pttl(webhook_slots.parked_key(url, TENANT))
    assert ttl == -2  # emptied lists are gone; a forgotten one expires


def test_a_cap_of_0_is_no_cap(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "0")
    slots = [webhook_slots.take_for(url, TENANT, get_settings(), park="x") for _ in range(10)]

    assert all(slot is not None and slot.token is None for slot in slots)
    assert held(url) == 0
    assert client().llen(webhook_slots.parked_key(url, TENANT)) == 0


def test_without_redis_attempts_go_ahead_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(webhook_slots, "_warned_at", float("-inf"))
    caplog.set_level(logging.WARNING, logger=webhook_slots.__name__)

    for _ in range(5):
        slot = webhook_slots.take_for(
            "https://hooks.example.com/in", TENANT, get_settings(), park="x"
        )
        assert slot is not None
        assert webhook_slots.release(slot) is None
    slot = webhook_slots.Slot("https://hooks.example.com/in", TENANT, "token")
    assert webhook_slots.release(slot) is None  # nothing raises on the way out either

    assert len(caplog.records) == 1
    assert "sending without it" in caplog.records[0].getMessage()


def test_a_slot_redis_refuses_is_left_to_its_lease(url: str) -> None:
    broken = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    slot = take(url, tenant=TENANT, cap=1, lease=30)
    assert slot is not None

    assert webhook_slots.release(slot, client=broken) is None

    assert held(url) == 1
