"""The simulated provider's rate limits: per model, RPM and TPM in a sliding window, a
429 with the real service's headers, and a report of the most calls in any window."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulator.ratelimits import _max_in_window
from tests.simulator.test_server import serving

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 10,
}


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    for name in ("SIM_LATENCY_MS", "SIM_RPM", "SIM_TPM", "SIM_RATE_WINDOW_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    with serving() as server, httpx.Client(base_url=server.url) as client:
        yield client


def chat(sim: httpx.Client, **changes: Any) -> httpx.Response:
    return sim.post("/v1/chat/completions", json={**CHAT, **changes})


def test_requests_over_the_rpm_get_a_429_with_reset_headers(sim: httpx.Client) -> None:
    sim.put("/_sim/ratelimit", json={"rpm": 3, "tpm": 0, "window_seconds": 2})

    answers = [chat(sim) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    # Another model has its own window.
    assert chat(sim, model="gpt-4o").status_code == 200
    report = sim.get("/_sim/ratelimit").json()
    assert report["rejected"] == 1
    assert report["models"]["gpt-4o-mini"] == {
        "accepted": 3,
        "max_requests_in_window": 3,
        "max_tokens_in_window": report["models"]["gpt-4o-mini"]["max_tokens_in_window"],
    }


def test_the_window_slides(sim: httpx.Client) -> None:
    sim.put("/_sim/ratelimit", json={"rpm": 2, "tpm": 0, "window_seconds": 0.5})
    assert [chat(sim).status_code for _ in range(3)] == [200, 200, 429]
    time.sleep(0.6)
    assert chat(sim).status_code == 200


def test_tokens_count_the_prompt_and_max_tokens(sim: httpx.Client) -> None:
    # "hello there" is 2 tokens + 4 framing + 2 = 8 prompt tokens, + 10 max_tokens = 18.
    sim.put("/_sim/ratelimit", json={"rpm": 0, "tpm": 45, "window_seconds": 5})
    assert [chat(sim).status_code for _ in range(3)] == [200, 200, 429]
    assert sim.get("/_sim/ratelimit").json()["models"]["gpt-4o-mini"]["max_tokens_in_window"] == 36
    assert chat(sim, max_tokens=1).status_code == 200  # 9 more fit exactly


def test_images_count_against_rpm(sim: httpx.Client) -> None:
    sim.put("/_sim/ratelimit", json={"rpm": 1, "tpm": 0, "window_seconds": 5})
    body = {"model": "dall-e-3", "prompt": "a fox"}
    codes = [sim.post("/v1/images/generations", json=body).status_code for _ in range(2)]
    assert codes == [200, 429]


def test_env_configures_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_RPM", "1")
    monkeypatch.setenv("SIM_RATE_WINDOW_SECONDS", "30")
    with serving() as server, httpx.Client(base_url=server.url) as sim:
        assert sim.get("/_sim/ratelimit").json()["rpm"] == 1
        assert [chat(sim).status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("body", [{"rpm": -1}, {"rpm": "60"}, {"window_seconds": 0}, {"tpm": True}])
def test_bad_configuration_is_400(sim: httpx.Client, body: dict[str, Any]) -> None:
    assert sim.put("/_sim/ratelimit", json=body).status_code == 400


def test_reset_clears_the_log_and_keeps_the_limits(sim: httpx.Client) -> None:
    sim.put("/_sim/ratelimit", json={"rpm": 1, "tpm": 0, "window_seconds": 30})
    assert [chat(sim).status_code for _ in range(2)] == [200, 429]
    assert sim.delete("/_sim/ratelimit").status_code == 204
    assert sim.get("/_sim/ratelimit").json()["models"] == {}
    assert chat(sim).status_code == 200


def test_the_most_calls_in_any_window() -> None:
    assert _max_in_window([], 1.0) == 0
    assert _max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert _max_in_window([0.0, 2.0, 4.0], 1.0) == 1
