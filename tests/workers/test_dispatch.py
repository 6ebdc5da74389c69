"""What the reconciler reads from the broker (workers/dispatch.jobs_in_broker): the job id
of every message waiting in the job queues, on a real Redis; counts from other brokers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery

from ops.redis_server import RedisServer
from workers import dispatch
from workers.publisher import TaskPublisher


def _app(broker_url: str, **transport_options: Any) -> Celery:
    app = Celery("dispatch-test")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = transport_options
    return app


@pytest.fixture
def broker(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    app = _app(url)
    monkeypatch.setattr(dispatch, "celery", app)
    yield app, redis.Redis.from_url(url)
    redis.Redis.from_url(url).flushdb()


def test_every_waiting_job_message_is_read_by_its_job_id(
    broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = broker
    monkeypatch.setattr(dispatch, "BROKER_PAGE", 2)  # pages of 2: 7 messages take 4 reads
    publisher = TaskPublisher(app)
    for n in range(4):
        publisher.send("tasks.content_generation", [f"job_direct{n}"], {})
    app.send_task("tasks.clustering", args=["job_kombu"])  # kombu's own envelope
    app.send_task("tasks.image_generation", args=["job_urgent"], priority=6)  # its own key
    client.lpush("text", b"not a task message")  # counted for no job
    app.send_task("tasks.webhooks.deliver", args=["delivery_1"])  # not a job queue

    seen = dispatch.jobs_in_broker()

    assert seen.job_ids == {"job_direct0", "job_direct1", "job_direct2", "job_direct3"} | {
        "job_kombu",
        "job_urgent",
    }
    assert client.llen("text") == 6  # read, not taken


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        json.dumps({"body": "e30=", "properties": {"body_encoding": "base64"}}).encode(),
        json.dumps({"body": "[[7], {}, {}]", "properties": {}}).encode(),
        json.dumps({"body": "[[], {}, {}]", "properties": {}}).encode(),
        json.dumps({"body": "!!", "properties": {"body_encoding": "base64"}}).encode(),
    ],
)
def test_a_message_that_names_no_job_is_none(raw: bytes) -> None:
    assert dispatch.job_id_of(raw) is None


def test_another_broker_gives_counts_per_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app("memory://")
    monkeypatch.setattr(dispatch, "celery", app)
    app.send_task("tasks.image_generation", args=["job_a"])  # declares both queues
    app.send_task("tasks.clustering", args=["job_b"])
    before = dispatch.jobs_in_broker()  # the memory transport lives as long as the process
    app.send_task("tasks.clustering", args=["job_c"])
    app.send_task("tasks.content_generation", args=["job_d"])

    seen = dispatch.jobs_in_broker()

    assert (before.job_ids, seen.job_ids) == (None, None)
    assert {q: seen.counts[q] - before.counts[q] for q in seen.counts} == {"text": 2, "image": 0}


def test_prefixed_keys_give_counts(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu prefixes LLEN and LPUSH under `global_keyprefix` but not LRANGE: listing would
    see empty queues and send every stale job again, so counts it is."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    app = _app(url, global_keyprefix="tenant1:")
    monkeypatch.setattr(dispatch, "celery", app)
    app.send_task("tasks.clustering", args=["job_a"])
    app.send_task("tasks.image_generation", args=["job_b"])

    seen = dispatch.jobs_in_broker()

    assert (seen.job_ids, dict(seen.counts)) == (None, {"text": 1, "image": 1})
    assert redis.Redis.from_url(url).llen("tenant1:text") == 1
    redis.Redis.from_url(url).flushdb()
