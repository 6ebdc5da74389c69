"""POST /v1/keyword-research against a misbehaving research service: every failure is a
clean JSON error with the query given back, no call outlives its deadline or holds more
than its cap, and what comes back can always be saved as it is."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.support import auth, on_plan
from tests.webhook_receiver import Receiver, Reply

MARGIN = 1.5  # seconds of slack on a deadline (a loaded CI machine)


def _answer(rows: list[Any]) -> Reply:
    body = json.dumps({"seed": "shoes", "keywords": rows}).encode()
    return Reply(200, headers={"content-type": "application/json"}, body=body)


def _row(n: int) -> dict[str, Any]:
    return {"keyword": f"shoes {n}", "volume": 1000 - n, "difficulty": 40, "cpc": 1.25}


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point AHREFS_API_URL at a local server answering from `upstream(*replies)`."""
    started: list[Receiver] = []

    def serve(*replies: Reply) -> Receiver:
        receiver = Receiver(*replies).__enter__()
        started.append(receiver)
        monkeypatch.setenv("AHREFS_API_URL", f"http://127.0.0.1:{receiver.port}/ahrefs")
        return receiver

    yield serve
    for receiver in started:
        receiver.__exit__()


def _research(client: Any, key: str, **body: Any) -> Any:
    return client.post("/v1/keyword-research", json={"seed": "shoes", **body}, headers=auth(key))


def _used(client: Any, key: str) -> int:
    limits = client.get("/v1/account", headers=auth(key)).get_json()["limits"]
    return int(limits["ahrefs_queries"]["used"])


def _assert_given_back(response: Any, client: Any, key: str, status: int = 502) -> None:
    assert response.status_code == status, response.get_json()
    code = "research_unavailable" if status == 502 else "research_busy"
    assert response.get_json()["error"]["code"] == code
    assert _used(client, key) == 0


def test_deeply_nested_json_is_a_502_and_the_query_given_back(client: Any, upstream: Any) -> None:
    """json raises RecursionError on it, which no list of expected errors names."""
    key, _ = on_plan(client, "starter")
    depth = 100_000
    upstream(Reply(200, body=b'{"keywords": ' + b"[" * depth + b"]" * depth + b"}"))

    _assert_given_back(_research(client, key), client, key)


def test_an_answer_that_is_not_an_object_is_a_502(client: Any, upstream: Any) -> None:
    key, _ = on_plan(client, "starter")
    upstream(Reply(200, body=b'["shoes"]'))

    _assert_given_back(_research(client, key), client, key)


@pytest.mark.parametrize("headers_first", [False, True], ids=["head-drips", "body-drips"])
def test_a_dripping_answer_is_cut_at_the_deadline(
    client: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch, headers_first: bool
) -> None:
    """One byte every 0.2 s: no single read waits long, the whole would take a minute."""
    key, _ = on_plan(client, "starter")
    monkeypatch.setenv("AHREFS_TIMEOUT_SECONDS", "1")
    reply = _answer([_row(n) for n in range(3)])
    reply.trickle, reply.headers_first = 0.2, headers_first
    upstream(reply)

    started = time.monotonic()
    response = _research(client, key)

    assert time.monotonic() - started < 1 + MARGIN
    _assert_given_back(response, client, key)


def test_an_answer_over_the_size_cap_is_a_502(
    client: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = on_plan(client, "starter")
    monkeypatch.setenv("AHREFS_MAX_RESPONSE_BYTES", "10000")
    upstream(_answer([_row(n) for n in range(500)]))  # about 35 kB

    _assert_given_back(_research(client, key), client, key)


def test_calls_beyond_the_process_cap_are_a_503_and_given_back(
    app: Any, client: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow service holds at most AHREFS_MAX_CONCURRENT API threads; the next caller
    is told to retry at once instead of waiting for a thread of its own."""
    key, _ = on_plan(client, "starter")
    monkeypatch.setenv("AHREFS_MAX_CONCURRENT", "1")
    slow = _answer([_row(n) for n in range(3)])
    slow.delay = 1.0
    receiver = upstream(slow, _answer([_row(1)]))
    first: list[Any] = []
    in_flight = threading.Thread(target=lambda: first.append(_research(app.test_client(), key)))
    in_flight.start()
    receiver.wait_for(1)

    refused = _research(client, key)
    in_flight.join()

    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["error"]["code"] == "research_busy"
    assert refused.headers["Retry-After"] == "5"
    assert first[0].status_code == 200, first[0].get_json()
    assert _used(client, key) == 1  # the refused one was given back
    assert len(receiver.requests) == 1
    assert _research(client, key).status_code == 200  # the slot was freed


def test_no_more_rows_than_asked_for(client: Any, upstream: Any) -> None:
    key, _ = on_plan(client, "starter")
    upstream(_answer([_row(n) for n in range(5000)]))

    response = _research(client, key, limit=10)

    assert response.status_code == 200, response.get_json()
    assert [k["keyword"] for k in response.get_json()["keywords"]] == [
        f"shoes {n}" for n in range(10)
    ]


BAD_ROWS: list[Any] = [
    {"keyword": ""},
    {"keyword": "   "},
    {"keyword": "x" * 1000},
    {"keyword": "neg volume", "volume": -5},
    {"keyword": "huge volume", "volume": 10**12},
    {"keyword": "hard", "difficulty": 500},
    {"keyword": "negative cpc", "cpc": -1},
    {"keyword": "nan cpc", "cpc": "NaN"},
    {"keyword": "huge cpc", "cpc": 1e12},
    {"keyword": "long country", "country": "usa"},
    {"keyword": "nul\u0000byte"},
    {"keyword": "\ud800 lone surrogate"},
    {"keyword": 123},
    {"keyword": None},
    {"volume": 10},
    "not an object",
    ["nor", "this"],
]


def test_rows_the_import_would_refuse_are_dropped(client: Any, upstream: Any) -> None:
    """POST /v1/keywords takes all or none, so one bad row would make saving the research
    a 422: only rows it accepts come back, and all of them save as they are."""
    key, _ = on_plan(client, "starter")
    good = [
        {"keyword": "  padded shoes ", "volume": 0, "difficulty": 100, "cpc": 0},
        {"keyword": "shoes uk", "country": "GB", "cpc": "2.499"},
        {"keyword": "y" * 300, "volume": None},
    ]
    upstream(_answer([*BAD_ROWS, good[0], *BAD_ROWS, good[1], good[2], _row(1)]))

    response = _research(client, key, limit=3)

    assert response.status_code == 200, response.get_json()
    found = response.get_json()["keywords"]
    assert found == [
        {"keyword": "padded shoes", "volume": 0, "difficulty": 100, "cpc": "0.00", "country": "us"},
        {"keyword": "shoes uk", "volume": None, "difficulty": None, "cpc": "2.50", "country": "gb"},
        {"keyword": "y" * 300, "volume": None, "difficulty": None, "cpc": None, "country": "us"},
    ]
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    saved = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": found}, headers=auth(key)
    )
    assert saved.status_code == 201, saved.get_json()
    assert len(saved.get_json()["added"]) == 3


def test_the_simulated_services_answer_saves_as_it_is(client: Any) -> None:
    key, _ = on_plan(client, "starter")

    response = _research(client, key, limit=100, country="DE")

    assert response.status_code == 200, response.get_json()
    found = response.get_json()["keywords"]
    assert len(found) == 100
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    saved = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": found}, headers=auth(key)
    )
    assert saved.status_code == 201, saved.get_json()
    assert len(saved.get_json()["added"]) == 100
