"""The simulated provider over real HTTP, driven by the real openai SDK where it matters."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from simulator.answers import PNG_SIGNATURE, count_tokens
from simulator.server import SimulatedProviderServer, make_server

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o-mini"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedProviderServer]:
    monkeypatch.delenv("SIM_LATENCY_MS", raising=False)
    with serving() as srv:
        yield srv


@contextmanager
def serving() -> Iterator[SimulatedProviderServer]:
    """A server on a free port, served from a daemon thread until the block ends."""
    srv = make_server(port=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def client(server: SimulatedProviderServer) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    yield sdk
    sdk.close()


def request(
    server: SimulatedProviderServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP call; `body` may be bytes (sent verbatim) or anything JSON-encodable."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=payload, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def messages(operation: str | None, job_input: Any) -> list[dict[str, str]]:
    """Our prompt protocol, as workers.provider.chat_messages builds it."""
    system = "You are a helpful assistant. Answer with JSON only."
    if operation:
        system += f"\nOPERATION: {operation}"
    text = job_input if isinstance(job_input, str) else json.dumps(job_input)
    user = "Follow the instructions for this input.\nINPUT:\n" + text
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def chat(client: openai.OpenAI, operation: str | None, job_input: Any, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=messages(operation, job_input), **kwargs
    )


def content_of(completion: Any) -> dict[str, Any]:
    return json.loads(completion.choices[0].message.content)


def content_of_raw(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(data["choices"][0]["message"]["content"])


def prompt_usage(sent: list[dict[str, str]]) -> int:
    return sum(count_tokens(m["content"]) + 4 for m in sent) + 2


def add_fault(server: SimulatedProviderServer, **rule: Any) -> int:
    status, _, body = request(server, "POST", "/_sim/faults", rule)
    assert status == 201
    return json.loads(body)["id"]


def stats(server: SimulatedProviderServer) -> dict[str, Any]:
    status, _, body = request(server, "GET", "/_sim/stats")
    assert status == 200
    return json.loads(body)


# --- tokens and usage -----------------------------------------------------------------------


def test_count_tokens_counts_words_and_punctuation():
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
    assert count_tokens('{"a": [1, 2]}') == 11


def test_usage_matches_count_tokens(client):
    sent = messages("clustering", {"keywords": ["seo tools", "seo tips", "content plan"]})
    completion = client.chat.completions.create(model=MODEL, messages=sent)

    expected_prompt = sum(count_tokens(m["content"]) + 4 for m in sent) + 2
    content = completion.choices[0].message.content
    assert completion.usage.prompt_tokens == expected_prompt
    assert completion.usage.completion_tokens == count_tokens(content)
    assert completion.usage.total_tokens == expected_prompt + count_tokens(content)


def test_response_has_openai_shape(server):
    body = {"model": "gpt-4.1", "messages": messages("clustering", {"keywords": ["a b"]})}
    status, headers, raw = request(server, "POST", "/v1/chat/completions", body)

    assert status == 200
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(raw)
    data = json.loads(raw)
    assert re.fullmatch(r"chatcmpl-\w+", data["id"])
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-4.1"
    assert isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


# --- operations -----------------------------------------------------------------------------


def test_clustering_groups_by_first_word_in_input_order(client):
    keywords = ["SEO tools", "content plan", "seo tips", "Content ideas", "backlinks"]
    result = content_of(chat(client, "clustering", {"keywords": keywords}))

    clusters = result["clusters"]
    assert [c["keywords"] for c in clusters] == [
        ["SEO tools", "seo tips"],
        ["content plan", "Content ideas"],
        ["backlinks"],
    ]
    assert all(isinstance(c["name"], str) and c["name"] for c in clusters)
    assert len({c["name"] for c in clusters}) == len(clusters)


@pytest.mark.parametrize("count", [1, 3, 7])
def test_idea_generation_gives_exactly_count_ideas(client, count):
    cluster = {"name": "Seo topics", "keywords": ["seo tools", "seo tips"]}
    result = content_of(chat(client, "idea_generation", {"cluster": cluster, "count": count}))

    ideas = result["ideas"]
    assert len(ideas) == count
    assert len({i["title"] for i in ideas}) == count
    for idea in ideas:
        assert idea["title"]
        assert idea["description"]
        assert idea["content_type"] in {"article", "guide", "listicle"}
        assert idea["target_keywords"]
        assert set(idea["target_keywords"]) <= set(cluster["keywords"])


def test_idea_generation_defaults_to_three(client):
    result = content_of(chat(client, "idea_generation", {"cluster": {"name": "Travel"}}))
    assert len(result["ideas"]) == 3


@pytest.mark.parametrize("word_count", [None, 150, 1200])
def test_content_generation_hits_word_count(client, word_count):
    job_input: dict[str, Any] = {"title": "How to Plan a Garden", "keywords": ["raised beds"]}
    if word_count is not None:
        job_input["word_count"] = word_count
    result = content_of(chat(client, "content_generation", job_input))

    wanted = word_count or 600
    assert result["title"] == "How to Plan a Garden"
    assert abs(len(result["body"].split()) - wanted) <= wanted * 0.1
    paragraphs = result["body"].split("\n\n")
    assert len(paragraphs) > 1
    assert all(p.strip() == p and p for p in paragraphs)


def test_content_generation_depends_on_title(client):
    first = content_of(chat(client, "content_generation", {"title": "Alpha", "word_count": 100}))
    second = content_of(chat(client, "content_generation", {"title": "Beta", "word_count": 100}))
    assert first["body"] != second["body"]


@pytest.mark.parametrize("count", [1, 3, 5])
def test_image_prompt_extraction_gives_count_prompts(client, count):
    text = "A red fox crosses a snowy field. The old lighthouse glows at dusk."
    result = content_of(chat(client, "image_prompt_extraction", {"text": text, "count": count}))

    prompts = result["prompts"]
    assert len(prompts) == count
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert len(set(prompts)) == count
    assert "red fox" in prompts[0]


@pytest.mark.parametrize(
    ("operation", "job_input"),
    [
        (None, {"keywords": ["a"]}),
        ("translation", {"text": "hola"}),
        ("clustering", "{not json"),
        ("clustering", {"keywords": "not a list"}),
    ],
)
def test_anything_else_gets_a_text_echo(client, operation, job_input):
    result = content_of(chat(client, operation, job_input))
    assert set(result) == {"text"}
    assert result["text"]


def test_same_request_gives_identical_choices_and_usage(server):
    body = {
        "model": MODEL,
        "messages": messages("content_generation", {"title": "Stable", "word_count": 200}),
    }
    first = json.loads(request(server, "POST", "/v1/chat/completions", body)[2])
    second = json.loads(request(server, "POST", "/v1/chat/completions", body)[2])

    assert json.dumps(first["choices"]) == json.dumps(second["choices"])
    assert first["usage"] == second["usage"]
    assert first["id"] == second["id"]


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_truncates_with_finish_reason_length(client, limit_field):
    job_input = {"title": "Long read", "word_count": 300}
    full = chat(client, "content_generation", job_input)
    cut = chat(client, "content_generation", job_input, **{limit_field: 25})

    assert full.choices[0].finish_reason == "stop"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 25
    content = cut.choices[0].message.content
    assert count_tokens(content) == 25
    assert full.choices[0].message.content.startswith(content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def test_generous_token_limit_changes_nothing(client):
    job_input = {"keywords": ["a b", "c d"]}
    plain = chat(client, "clustering", job_input)
    limited = chat(client, "clustering", job_input, max_tokens=10_000)
    assert limited.choices[0].finish_reason == "stop"
    assert limited.choices[0].message.content == plain.choices[0].message.content


# --- fault injection ------------------------------------------------------------------------


def test_fault_500_once_then_success(client, server):
    add_fault(server, status=500, times=1)

    with pytest.raises(openai.InternalServerError) as failure:
        chat(client, "clustering", {"keywords": ["a"]})
    assert failure.value.status_code == 500
    assert failure.value.body["type"] == "server_error"

    assert content_of(chat(client, "clustering", {"keywords": ["a"]}))["clusters"]
    counters = stats(server)
    assert counters["requests"]["chat"] == 2
    assert counters["failed"] == 1
    assert counters["pending_faults"] == []


def test_fault_429_sends_retry_after(client, server):
    add_fault(server, status=429, retry_after=2)

    with pytest.raises(openai.RateLimitError) as failure:
        chat(client, "clustering", {"keywords": ["a"]})
    assert failure.value.response.headers["retry-after"] == "2"
    assert failure.value.code == "rate_limit_exceeded"
    assert failure.value.body["type"] == "rate_limit_error"


def test_fault_without_retry_after_sends_no_header(client, server):
    add_fault(server, status=429)

    with pytest.raises(openai.RateLimitError) as failure:
        chat(client, "clustering", {"keywords": ["a"]})
    assert "retry-after" not in failure.value.response.headers


def test_sdk_retries_honour_retry_after(server):
    add_fault(server, status=429, times=2, retry_after=0.1)

    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=2) as sdk:
        result = content_of(chat(sdk, "clustering", {"keywords": ["a"]}))

    assert result["clusters"]
    assert stats(server)["requests"]["chat"] == 3
    assert stats(server)["failed"] == 2


def test_fault_4xx_is_an_invalid_request(client, server):
    add_fault(server, status=400)

    with pytest.raises(openai.BadRequestError) as failure:
        chat(client, "clustering", {"keywords": ["a"]})
    assert failure.value.body["type"] == "invalid_request_error"


def test_fault_times_counts_down(client, server):
    add_fault(server, status=503, times=2)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            chat(client, "clustering", {"keywords": ["a"]})
    chat(client, "clustering", {"keywords": ["a"]})
    assert stats(server)["failed"] == 2


def test_fault_match_scopes_the_rule(client, server):
    add_fault(server, status=500, match="content_generation")

    # A non-matching request neither fails nor consumes the rule.
    chat(client, "clustering", {"keywords": ["a"]})
    assert len(stats(server)["pending_faults"]) == 1
    with pytest.raises(openai.InternalServerError):
        chat(client, "content_generation", {"title": "x", "word_count": 50})
    assert stats(server)["pending_faults"] == []


def test_first_matching_rule_wins(client, server):
    add_fault(server, status=502, match="no such text")
    add_fault(server, status=503)

    with pytest.raises(openai.InternalServerError) as failure:
        chat(client, "clustering", {"keywords": ["a"]})
    assert failure.value.status_code == 503
    assert [r["status"] for r in stats(server)["pending_faults"]] == [502]


def test_faults_apply_to_images(client, server):
    add_fault(server, status=500)

    with pytest.raises(openai.InternalServerError):
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert stats(server)["requests"]["images"] == 1


def test_rules_are_consumed_exactly_once_under_concurrency(server):
    add_fault(server, status=500, times=5)
    body = {"model": MODEL, "messages": messages("clustering", {"keywords": ["a"]})}

    def call(_: int) -> int:
        return request(server, "POST", "/v1/chat/completions", body)[0]

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(call, range(20)))

    assert statuses.count(500) == 5
    assert statuses.count(200) == 15
    counters = stats(server)
    assert counters["requests"]["chat"] == 20
    assert counters["failed"] == 5


def test_rule_latency_delays_the_response(client, server):
    add_fault(server, latency_ms=200)

    started = time.monotonic()
    chat(client, "clustering", {"keywords": ["a"]})
    assert time.monotonic() - started >= 0.2

    assert stats(server)["pending_faults"] == []


def test_latency_header_delays_the_response(client):
    started = time.monotonic()
    chat(client, "clustering", {"keywords": ["a"]}, extra_headers={"X-Sim-Latency-Ms": "200"})
    assert time.monotonic() - started >= 0.2


def test_env_latency_applies_to_every_call(monkeypatch):
    monkeypatch.setenv("SIM_LATENCY_MS", "150")
    with (
        serving() as srv,
        openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        for _ in range(2):
            started = time.monotonic()
            chat(sdk, "clustering", {"keywords": ["a"]})
            assert time.monotonic() - started >= 0.15


def test_fail_status_header(client, server):
    with pytest.raises(openai.InternalServerError) as failure:
        chat(client, "clustering", {"keywords": ["a"]}, extra_headers={"X-Sim-Fail-Status": "503"})
    assert failure.value.status_code == 503
    assert stats(server)["failed"] == 1


@pytest.mark.parametrize(
    "rule",
    [
        {"status": 200},
        {"status": "500"},
        {"times": 0},
        {"latency_ms": -1},
        {"match": 3},
        {"retry_after": "soon"},
    ],
)
def test_bad_fault_rules_are_rejected(server, rule):
    status, _, body = request(server, "POST", "/_sim/faults", rule)
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert stats(server)["pending_faults"] == []


def test_clear_faults(server, client):
    add_fault(server, status=500, times=3)
    status, _, body = request(server, "DELETE", "/_sim/faults")

    assert status == 204
    assert body == b""
    assert stats(server)["pending_faults"] == []
    chat(client, "clustering", {"keywords": ["a"]})


def test_stats_count_and_reset(client, server):
    chat(client, "clustering", {"keywords": ["a"]})
    client.images.generate(model="dall-e-3", prompt="a cat", n=2)
    request(server, "POST", "/ahrefs/keyword-research", {"seed": "coffee"})
    request(server, "POST", "/v1/chat/completions", b"{broken")
    rule_id = add_fault(server, status=500, times=4, match="zzz", retry_after=1.5)

    counters = stats(server)
    assert counters["requests"] == {"chat": 2, "images": 1, "ahrefs": 1, "stripe": 0}
    assert counters["failed"] == 1
    assert counters["pending_faults"] == [
        {
            "id": rule_id,
            "status": 500,
            "times": 4,
            "latency_ms": 0,
            "match": "zzz",
            "retry_after": 1.5,
            "answer": None,
            "code": None,
        }
    ]

    assert request(server, "DELETE", "/_sim/stats")[0] == 204
    counters = stats(server)
    assert counters["requests"] == {"chat": 0, "images": 0, "ahrefs": 0, "stripe": 0}
    assert counters["failed"] == 0
    assert len(counters["pending_faults"]) == 1


# --- images ---------------------------------------------------------------------------------


def test_images_generate_fetchable_pngs(client, server):
    result = client.images.generate(model="hidream-full", prompt="a lighthouse at dusk", n=3)

    urls = [item.url for item in result.data]
    assert len(set(urls)) == 3
    for item in result.data:
        assert item.url.startswith(server.url + "/images/")
        assert re.search(r"/images/[0-9a-f]{32}\.png$", item.url)
        assert item.revised_prompt == "a lighthouse at dusk"

    status, headers, body = request(server, "GET", urls[0].removeprefix(server.url))
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert body.startswith(PNG_SIGNATURE)
    assert int(headers["content-length"]) == len(body)


def test_image_urls_are_deterministic(client):
    first = client.images.generate(model="dall-e-3", prompt="a cat")
    second = client.images.generate(model="dall-e-3", prompt="a cat")
    other = client.images.generate(model="gpt-image-1", prompt="a cat")
    assert first.data[0].url == second.data[0].url
    assert first.data[0].url != other.data[0].url


def test_images_b64_json(client):
    result = client.images.generate(model="dall-e-3", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "dall-e-3"},
        {"model": "dall-e-3", "prompt": "  "},
        {"model": "dall-e-3", "prompt": "cat", "n": 0},
        {"model": "dall-e-3", "prompt": "cat", "n": 11},
    ],
)
def test_images_validation(server, body):
    status, _, raw = request(server, "POST", "/v1/images/generations", body)
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_images_validation_through_sdk(client):
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="dall-e-3", prompt="cat", n=11)


# --- other endpoints ------------------------------------------------------------------------


def test_models_list(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "hidream-full", "dall-e-3", "gpt-image-1"]


def test_healthz(server):
    status, _, body = request(server, "GET", "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("body", [b"{broken", b"[1, 2]", b"\xff\xfe"])
def test_malformed_chat_body_is_400(server, body):
    status, headers, raw = request(server, "POST", "/v1/chat/completions", body)
    assert status == 400
    assert int(headers["content-length"]) == len(raw)
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None
    assert error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
    ],
)
def test_invalid_chat_request_is_400(server, body):
    status, _, _ = request(server, "POST", "/v1/chat/completions", body)
    assert status == 400


def test_invalid_request_through_sdk(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/v1/embeddings")])
def test_unknown_path_is_404_json(server, method, path):
    status, _, raw = request(server, method, path, {} if method == "POST" else None)
    assert status == 404
    assert json.loads(raw)["error"]["message"]


def test_keep_alive_connection_serves_several_requests(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        for path in ["/healthz", "/nope", "/healthz"]:
            conn.request("GET", path)
            response = conn.getresponse()
            json.loads(response.read())
        conn.request("POST", "/v1/chat/completions", body=b"{broken")
        response = conn.getresponse()
        assert response.status == 400
        response.read()
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status": "ok"}'
    finally:
        conn.close()


def test_chunked_request_body_is_read_whole(server):
    """httpx and the openai SDK send chunked bodies when they cannot size them up front."""
    body = json.dumps({"model": MODEL, "messages": messages("clustering", {"keywords": ["a b"]})})
    parts = [body[:7].encode(), body[7:40].encode(), body[40:].encode()]
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=iter(parts), encode_chunked=True)
        response = conn.getresponse()
        data = json.loads(response.read())
    finally:
        conn.close()

    assert response.status == 200
    assert content_of_raw(data) == {"clusters": [{"name": "A topics", "keywords": ["a b"]}]}
    assert data["usage"]["prompt_tokens"] == prompt_usage(json.loads(body)["messages"])


def test_malformed_chunked_body_is_400_json(server):
    host, port = server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
        )
        reply = sock.makefile("rb").read()

    head, _, raw = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


# --- Ahrefs stand-in ------------------------------------------------------------------------


def test_ahrefs_keyword_research_is_deterministic(server):
    body = {"seed": "Coffee Beans", "limit": 25, "country": "gb"}
    status, _, first = request(server, "POST", "/ahrefs/keyword-research", body)
    _, _, second = request(server, "POST", "/ahrefs/keyword-research", body)

    assert status == 200
    assert first == second
    data = json.loads(first)
    assert data["seed"] == "Coffee Beans"
    rows = data["keywords"]
    assert len(rows) == 25
    assert len({row["keyword"] for row in rows}) == 25
    assert any(row["keyword"] == "coffee beans" for row in rows)
    for row in rows:
        assert "coffee beans" in row["keyword"]
        assert isinstance(row["volume"], int)
        assert row["volume"] > 0
        assert 0 <= row["difficulty"] <= 100
        assert isinstance(row["cpc"], float)
    other = json.loads(request(server, "POST", "/ahrefs/keyword-research", {"seed": "tea"})[2])
    assert len(other["keywords"]) == 10
    assert other["keywords"] != rows[:10]


def test_ahrefs_limit_up_to_100(server):
    status, _, raw = request(
        server, "POST", "/ahrefs/keyword-research", {"seed": "x", "limit": 100}
    )
    assert status == 200
    assert len({row["keyword"] for row in json.loads(raw)["keywords"]}) == 100


@pytest.mark.parametrize(
    "body", [{}, {"seed": ""}, {"seed": "x", "limit": 0}, {"seed": "x", "limit": 101}]
)
def test_ahrefs_validation(server, body):
    status, _, raw = request(server, "POST", "/ahrefs/keyword-research", body)
    assert status == 400
    assert json.loads(raw)["error"]["message"]


# --- command line ---------------------------------------------------------------------------


def test_cli_serves_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.fullmatch(r"simulated provider listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert found, line
        conn = http.client.HTTPConnection("127.0.0.1", int(found.group(2)), timeout=10)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
            # The idle keep-alive connection stays open: it must not delay the exit.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            conn.close()
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_max_tokens_above_the_models_output_cap_is_refused_as_openai_does(client):
    with pytest.raises(openai.BadRequestError) as refused:
        chat(client, "clustering", {"keywords": ["a b"]}, max_tokens=16_385)
    assert refused.value.code == "invalid_value"
    assert "at most 16384 completion tokens" in refused.value.message
    wide = client.chat.completions.create(  # gpt-4.1 writes up to 32,768
        model="gpt-4.1", messages=messages("clustering", {"keywords": ["a b"]}), max_tokens=32_768
    )
    assert content_of(wide)["clusters"]
