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


@pytest.fixture
def url(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A receiver URL of its own (so slots do not leak between tests), and our Redis."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return f"https://hooks-{uuid.uuid4().hex[:8]}.example.com/in"


def client() -> redis.Redis:
    return webhook_slots._redis(get_settings().redis_url)


def held(url: str) -> int:
    return int(client().zcard(webhook_slots.key(url)))


def test_one_endpoint_is_scheme_host_and_port() -> None:
    assert endpoint("https://Hooks.Example.com/a?x=1") == "https://hooks.example.com:443"
    assert endpoint("https://hooks.example.com:443/b") == "https://hooks.example.com:443"
    assert endpoint("https://hooks.example.com./b") == "https://hooks.example.com:443"
    assert endpoint("http://hooks.example.com/a") == "http://hooks.example.com:80"
    assert endpoint("http://hooks.example.com:8080/a") == "http://hooks.example.com:8080"
    assert endpoint("http://user@[::1]:9000/x") == "http://[::1]:9000"
    assert endpoint("http://hooks.example.com:99999/") == "http://hooks.example.com:0"


def test_at_most_cap_slots_per_endpoint(url: str) -> None:
    slots = [take(url, cap=2, lease=30) for _ in range(3)]

    assert [slot is not None for slot in slots] == [True, True, False]
    # Another path on the same endpoint shares its slots; another port does not.
    assert take(url.replace("/in", "/other"), cap=2, lease=30) is None
    assert take(url.replace(".com/", ".com:8443/"), cap=2, lease=30) is not None
    assert held(url) == 2


def test_a_released_slot_is_free_at_once(url: str) -> None:
    first = take(url, cap=1, lease=30)
    assert first is not None
    assert take(url, cap=1, lease=30) is None

    webhook_slots.release(first)

    assert take(url, cap=1, lease=30) is not None
    webhook_slots.release(first)  # releasing twice takes nothing from the new holder
    assert take(url, cap=1, lease=30) is None


def test_a_dead_holders_slot_frees_itself_when_its_lease_ends(url: str) -> None:
    assert take(url, cap=1, lease=0.3) is not None  # its worker is killed: never released
    assert take(url, cap=1, lease=0.3) is None

    time.sleep(0.4)

    assert take(url, cap=1, lease=30) is not None
    assert held(url) == 1  # the dead lease was cleaned up, not just outnumbered
    ttl = client().pttl(webhook_slots.key(url))
    assert 25_000 < ttl <= 30_000  # an idle endpoint's key goes away by itself


def test_threads_racing_for_the_slots_get_exactly_cap(url: str) -> None:
    got: list[bool] = []
    start = threading.Barrier(20)

    def attempt() -> None:
        start.wait()
        got.append(take(url, cap=4, lease=30) is not None)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(got) == [False] * 16 + [True] * 4


def test_the_context_manager_releases_even_when_the_attempt_raises(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")

    def crashing_attempt() -> None:
        with webhook_slots.endpoint_slot(url) as admitted:
            assert admitted
            with webhook_slots.endpoint_slot(url) as second:
                assert not second
            raise RuntimeError("the attempt crashed")

    with pytest.raises(RuntimeError):
        crashing_attempt()

    assert held(url) == 0


def test_a_cap_of_0_is_no_cap(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "0")
    slots = [webhook_slots.endpoint_slot(url) for _ in range(10)]

    assert all([slot.__enter__() for slot in slots])
    assert held(url) == 0


def test_without_redis_attempts_go_ahead_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(webhook_slots, "_warned_at", float("-inf"))
    caplog.set_level(logging.WARNING, logger=webhook_slots.__name__)

    for _ in range(5):
        with webhook_slots.endpoint_slot("https://hooks.example.com/in") as admitted:
            assert admitted
    slot = webhook_slots.Slot("aijobs:webhook-endpoint:x", "token")
    webhook_slots.release(slot)  # nothing raises on the way out either

    assert len(caplog.records) == 1
    assert "sending without it" in caplog.records[0].getMessage()


def test_a_slot_redis_refuses_is_left_to_its_lease(url: str) -> None:
    broken = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    slot = take(url, cap=1, lease=30)
    assert slot is not None

    webhook_slots.release(slot, client=broken)

    assert held(url) == 1


def test_deferrals_are_short_and_spread() -> None:
    delays = [webhook_slots.defer_seconds() for _ in range(200)]

    assert all(2.0 <= d <= 5.0 for d in delays)
    assert max(delays) - min(delays) > 1.5
