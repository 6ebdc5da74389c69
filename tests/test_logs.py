"""Structured logs: the ids bound by a request or task reach every line, JSON lines
parse, secrets are cut to a prefix, and the API hands its request id back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import logs
from tests.support import auth, register


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Root-logger lines as the JSON handler writes them."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)
    logs.clear()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_bound_ids_reach_each_line_and_unbind_after(json_lines: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    with logs.bound(job_id="job_1", account_id="acc_1"):
        log.info("inside %s", "the block", extra={"hold": 12})
    log.info("outside")
    inside, outside = parsed(json_lines)
    assert inside["message"] == "inside the block"
    assert (inside["job_id"], inside["account_id"], inside["hold"]) == ("job_1", "acc_1", 12)
    assert inside["level"] == "info"
    assert inside["logger"] == "test.logs"
    assert "job_id" not in outside


@pytest.mark.parametrize(
    "secret",
    ["aij_" + "x" * 40, "tok_" + "y1.z" * 12, "whsec_" + "QUJD" * 10, "sk-" + "proj" * 12],
)
def test_secrets_are_cut_to_a_prefix(json_lines: io.StringIO, secret: str) -> None:
    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        logging.getLogger("test.logs").exception("key %s refused", secret)
    (line,) = parsed(json_lines)
    assert secret not in json.dumps(line)
    assert secret[:6] in line["message"]
    assert secret not in line["exception"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://app:s3cr%2Ft@db:5432/aijobs", "postgresql+psycopg://app:***@db"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:p@ss@cache/1", "rediss://default:***@cache/1"),
    ],
)
def test_passwords_in_urls_are_hidden(json_lines: io.StringIO, url: str, shown: str) -> None:
    logging.getLogger("test.logs").error("cannot reach %s", url)
    (line,) = parsed(json_lines)
    assert shown in line["message"]
    assert all(secret not in line["message"] for secret in ("s3cr", "hunter2", "p@ss"))
    assert logs.redact("sqlite:///var/aijobs.db and https://example.com/a:b") == (
        "sqlite:///var/aijobs.db and https://example.com/a:b"
    )


def test_text_format_names_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    record = logging.makeLogRecord({"msg": "settled", "levelname": "INFO", "name": "x"})
    with logs.bound(job_id="job_9"):
        logs.ContextFilter().filter(record)
    assert logs.TextFormatter().format(record).endswith("settled [job_id=job_9]")


def test_configure_installs_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        monkeypatch.setenv("LOG_FORMAT", "json")
        logs.configure()
        logs.configure()
        ours = [h for h in root.handlers if getattr(h, "aijobs", False)]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, logs.JsonFormatter)
    finally:
        root.handlers[:] = before
        root.setLevel(level)


def test_the_api_returns_and_logs_its_request_id(client: Any, json_lines: io.StringIO) -> None:
    key, account = register(client)
    body = {"operation": "image_generation", "input": {"prompt": "a quiet harbour"}}
    sent = client.post("/v1/jobs", json=body, headers={**auth(key), "X-Request-Id": "req-42"})
    assert sent.headers["X-Request-Id"] == "req-42"
    job = sent.get_json()
    submitted = [line for line in parsed(json_lines) if line.get("job_id") == job["id"]]
    assert submitted
    assert submitted[0]["request_id"] == "req-42"
    assert submitted[0]["account_id"] == account["id"]
    assert submitted[0]["operation"] == "image_generation"

    made_up = client.get("/healthz", headers={"X-Request-Id": 'no spaces; no quotes"'})
    assert made_up.headers["X-Request-Id"] != 'no spaces; no quotes"'
    assert len(made_up.headers["X-Request-Id"]) == 32
