"""The one-LPUSH publisher writes what `celery.send_task` writes, on a real Redis."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from ops.redis_server import RedisServer
from workers.publisher import TaskPublisher

# Fresh per message, or the sending process's own: compared by shape only.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to", "origin"}


def _app(broker_url: str, **transport_options: Any) -> Celery:
    app = Celery("publisher-test")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = transport_options
    return app


def _pop(url: str, queue: str) -> dict[str, Any]:
    raw = redis.Redis.from_url(url).rpop(queue)
    assert raw is not None, f"nothing on {queue}"
    message: dict[str, Any] = json.loads(raw)
    return message


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    def strip(part: dict[str, Any]) -> dict[str, Any]:
        return {k: ("<per message>" if k in PER_MESSAGE else v) for k, v in part.items()}

    return {
        **message,
        "body": json.loads(base64.b64decode(message["body"])),
        "headers": strip(message["headers"]),
        "properties": strip(message["properties"]),
    }


@pytest.mark.parametrize(
    ("name", "queue"), [("tasks.clustering", "text"), ("tasks.image_generation", "image")]
)
def test_the_message_is_the_one_send_task_writes(
    redis_server: RedisServer, name: str, queue: str
) -> None:
    app = _app(redis_server.url)
    redis.Redis.from_url(redis_server.url).delete(queue)
    headers = {"request_id": "req-1"}

    app.send_task(name, args=["job_a"], headers=headers)
    by_celery = _pop(redis_server.url, queue)
    publisher = TaskPublisher(app)
    publisher.send(name, ["job_a"], headers)
    by_us = _pop(redis_server.url, queue)

    assert publisher.direct
    assert _comparable(by_us) == _comparable(by_celery)
    assert by_us["headers"]["id"] == by_us["headers"]["root_id"]
    assert by_us["headers"]["id"] == by_us["properties"]["correlation_id"]
    assert by_us["headers"]["origin"] == by_celery["headers"]["origin"]
    assert by_us["body"] == by_celery["body"]  # same JSON, so the same base64


@pytest.mark.parametrize(
    "args",
    [
        ["job_a", "run_b"],
        ["x" * 1018],
        ["x" * 3000],
        ["it's", 'a"b', "a\nb", "back\\slash", "é"],
        [7, None],
        [{"nested": ["a"]}],
        [],
    ],
    ids=[
        "ids",
        "at the size limit",
        "long: saferepr truncates",
        "quotes, escapes, non-ASCII",
        "not strings",
        "nested",
        "none",
    ],
)
def test_args_are_described_as_celery_describes_them(
    redis_server: RedisServer, args: list[Any]
) -> None:
    """`argsrepr` is a plain repr only where it equals Celery's saferepr."""
    app = _app(redis_server.url)
    app.send_task("tasks.clustering", args=args)
    by_celery = _pop(redis_server.url, "text")
    TaskPublisher(app).send("tasks.clustering", args, {})
    by_us = _pop(redis_server.url, "text")

    assert by_us["headers"]["argsrepr"] == by_celery["headers"]["argsrepr"]
    assert by_us["headers"]["kwargsrepr"] == by_celery["headers"]["kwargsrepr"]
    assert _comparable(by_us) == _comparable(by_celery)


def test_kombu_reads_it_as_a_celery_task(redis_server: RedisServer) -> None:
    """The worker's consumer side: kombu's Redis channel decodes it into the task call."""
    app = _app(redis_server.url)
    redis.Redis.from_url(redis_server.url).delete("text")
    TaskPublisher(app).send("tasks.content_generation", ["job_b"], {"request_id": "req-2"})

    with Connection(redis_server.url) as connection:
        message = connection.SimpleQueue("text", no_ack=True).get(timeout=5)
        assert message.headers["task"] == "tasks.content_generation"
        assert message.headers["request_id"] == "req-2"
        assert message.decode()[0] == ["job_b"]
        assert message.delivery_info["routing_key"] == "text"


def test_other_brokers_and_renamed_keys_keep_send_task(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, Any]] = []
    cases = [
        _app("amqp://guest@127.0.0.1:1//"),
        _app("rediss://127.0.0.1:1/0"),
        _app("redis://127.0.0.1:1/0", global_keyprefix="tenant:"),
        _app("redis://127.0.0.1:1/0", priority_steps=[0, 5]),
    ]
    for app in cases:
        monkeypatch.setattr(app, "send_task", lambda name, **kw: sent.append((name, kw)))
        publisher = TaskPublisher(app)
        publisher.send("tasks.clustering", ["job_c"], {"request_id": "r"})
        assert not publisher.direct
    assert sent == [("tasks.clustering", {"args": ["job_c"], "headers": {"request_id": "r"}})] * 4


def test_a_broker_that_is_down_raises_at_once() -> None:
    """The caller turns it into a 503 and undoes the job (tests/e2e/test_stack.py)."""
    with pytest.raises(redis.ConnectionError):
        TaskPublisher(_app("redis://127.0.0.1:1/0")).send("tasks.clustering", ["job_d"], {})
