"""Fault rules that spoil a chat answer the provider still bills: `overlong` runs past
max_tokens (cut off, finish_reason `length`), `not_json` is prose."""

from __future__ import annotations

import json

import httpx
import pytest

from simulator.answers import count_tokens
from tests.simulator.test_server import serving

IDEAS = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Ideas.\nOPERATION: idea_generation"},
        {"role": "user", "content": 'INPUT:\n{"cluster": {"name": "Tea"}, "count": 2}'},
    ],
    "max_tokens": 500,
}


def test_answers_are_spoiled_once_each_then_honest_again() -> None:
    with serving() as server, httpx.Client(base_url=server.url) as sim:
        sim.post("/_sim/faults", json={"answer": "overlong", "times": 1})
        sim.post("/_sim/faults", json={"answer": "not_json", "times": 1})
        overlong, prose, honest = (
            sim.post("/v1/chat/completions", json=IDEAS).json() for _ in range(3)
        )

    assert overlong["choices"][0]["finish_reason"] == "length"
    assert overlong["usage"]["completion_tokens"] == 500
    assert prose["choices"][0]["finish_reason"] == "stop"
    text = prose["choices"][0]["message"]["content"]
    assert prose["usage"]["completion_tokens"] == count_tokens(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert len(json.loads(honest["choices"][0]["message"]["content"])["ideas"]) == 2


def test_an_unknown_answer_is_400() -> None:
    with serving() as server, httpx.Client(base_url=server.url) as sim:
        assert sim.post("/_sim/faults", json={"answer": "rude"}).status_code == 400
