"""The shared provider rate limiter (workers/ratelimit.py) on a real Redis, and the
provider client's use of it: windows per model, tokens, a 429 that pauses every worker,
admin overrides, and a limiter that never fails a job for saying "not yet" (until its
bound), nor when Redis is gone."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers import provider, ratelimit


class Recorder:
    """A Sleeper that sleeps for real and remembers how long it was asked to."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def model(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A model name of its own (so windows do not leak between tests) and our Redis."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("PROVIDER_RATE_WINDOW_SECONDS", "1")
    name = f"model-{uuid.uuid4().hex[:8]}"
    yield name
    ratelimit.set_override(name, None)


def window_ms() -> int:
    return 2000  # 1 s window + the margin


def test_at_most_rpm_requests_per_window(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = ratelimit.Limits(rpm=3)
    assert [ratelimit._try(model, 0, limits, window_ms()) for _ in range(3)] == [0, 0, 0]
    wait = ratelimit._try(model, 0, limits, window_ms())
    assert 0 < wait <= 2
    # acquire sleeps until the oldest request leaves the window, then is admitted.
    monkeypatch.setenv("PROVIDER_RPM", "3")
    sleeper = Recorder()
    assert ratelimit.acquire(model, 0, sleeper) > 0
    assert sleeper.asked


def test_tokens_per_window(model: str) -> None:
    limits = ratelimit.Limits(tpm=100)
    assert ratelimit._try(model, 60, limits, window_ms()) == 0
    assert ratelimit._try(model, 60, limits, window_ms()) > 0
    assert ratelimit._try(model, 40, limits, window_ms()) == 0
    # A request bigger than the whole limit still goes when the window is empty.
    other = f"{model}-big"
    assert ratelimit._try(other, 500, limits, window_ms()) == 0


def test_a_pause_holds_every_caller_and_only_grows(model: str) -> None:
    ratelimit.pause(model, 5)
    ratelimit.pause(model, 0.1)  # a shorter hint does not cut the pause
    wait = ratelimit._try(model, 0, ratelimit.Limits(), window_ms())
    assert 4 < wait <= 5


def test_an_admin_override_wins_over_the_env(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_MODEL_LIMITS", f"{model}=0/0")
    ratelimit.set_override(model, ratelimit.Limits(rpm=1))
    assert ratelimit.effective_limits(model) == ratelimit.Limits(rpm=1)
    env = ratelimit.limits_for(model)
    assert ratelimit._try(model, 0, env, window_ms()) == 0
    assert ratelimit._try(model, 0, env, window_ms()) > 0
    ratelimit.set_override(model, None)
    assert ratelimit.effective_limits(model) == ratelimit.Limits()


def test_waiting_past_the_bound_gives_up(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_RPM", "1")
    monkeypatch.setenv("PROVIDER_RATE_WINDOW_SECONDS", "30")
    monkeypatch.setenv("PROVIDER_RATE_MAX_WAIT_SECONDS", "1")
    ratelimit.acquire(model, 0, Recorder())
    with pytest.raises(ratelimit.RateLimitWaitExceeded):
        ratelimit.acquire(model, 0, Recorder())


def test_without_redis_calls_go_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("PROVIDER_RPM", "1")
    sleeper = Recorder()
    ratelimit.acquire("gpt-4o-mini", 10, sleeper)
    ratelimit.pause("gpt-4o-mini", 1)
    assert sleeper.asked == []


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ratelimit-reset-requests": "6m0s", "retry-after": "2"}, 360),
        ({"x-ratelimit-reset-tokens": "17ms"}, 0.017),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-requests": "soon"}, ratelimit.DEFAULT_PAUSE_SECONDS),
        ({}, ratelimit.DEFAULT_PAUSE_SECONDS),
    ],
)
def test_reset_hints(headers: dict[str, str], seconds: float) -> None:
    assert ratelimit.reset_seconds(headers) == pytest.approx(seconds)


def test_model_limits_setting() -> None:
    assert ratelimit.parse_model_limits(" gpt-4o=500/30000, dall-e-3=7 ,") == {
        "gpt-4o": ratelimit.Limits(500, 30000),
        "dall-e-3": ratelimit.Limits(7, 0),
    }
    with pytest.raises(ValueError, match="PROVIDER_MODEL_LIMITS"):
        ratelimit.parse_model_limits("gpt-4o=lots")


def test_a_provider_429_pauses_every_worker_and_uses_no_attempt(
    env: dict[str, str], sim_control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One attempt allowed, and the first answer is a 429 asking for 2 s: the call still
    succeeds (a 429 is not a failed attempt), and meanwhile the model is paused for
    everyone, not just the thread that got it."""
    monkeypatch.setenv("PROVIDER_MAX_ATTEMPTS", "1")
    model = "gpt-4.1"
    redis.Redis.from_url(env["REDIS_URL"]).delete(*ratelimit._keys(model))
    sim_control.post("/_sim/faults", json={"status": 429, "times": 1, "retry_after": 2})
    answers: list[Any] = []
    call = threading.Thread(
        target=lambda: answers.append(provider.chat(model, [{"role": "user", "content": "hi"}], 20))
    )
    call.start()
    deadline = time.monotonic() + 10
    while sim_control.get("/_sim/stats").json()["requests"]["chat"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)  # the 429 has been received and the pause set
    paused = ratelimit._try(model, 0, ratelimit.Limits(), window_ms())
    call.join(15)

    assert paused > 0.5
    assert answers
    assert answers[0].text
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 2
