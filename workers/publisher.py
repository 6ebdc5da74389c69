"""Publishing a job's task message to a Redis broker in one LPUSH.

`celery.send_task` costs ~0.6 ms of CPU per message on the 2-core machine (producer
pool, router, declare checks, kombu's serializer registry and channel): the largest
single cost of `POST /v1/jobs` (bench/admission.py). On a `redis://` broker it writes
one JSON envelope to the list named after the queue; this writes the same envelope
directly: the message itself is built by Celery's own `amqp.as_task_v2` (protocol 2),
and the queue comes from Celery's router, so a worker cannot tell the two apart
(tests/workers/test_publisher.py compares them field by field). Any other broker, or
transport options that change key names, keep `send_task`.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import uuid
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.utils.json import dumps

# A broker that does not answer must cost a request at most this, not a TCP timeout;
# the caller then undoes the job (503) or leaves it to the reconciler.
BROKER_TIMEOUT_SECONDS = 5.0
# Transport options under which kombu's keys or envelope differ from what is written here.
_CHANGED_BY = ("global_keyprefix", "sep", "priority_steps", "queue_order_strategy")
_ID = re.compile(r"[A-Za-z0-9_.:-]*")


class TaskPublisher:
    """Tasks by name, positional arguments and headers; no eta, no priority, no result."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        url = str(app.conf.broker_url or "")
        options = app.conf.broker_transport_options or {}
        self.direct = url.startswith("redis://") and not any(k in options for k in _CHANGED_BY)
        self._client = (
            redis.Redis.from_url(
                url,
                socket_timeout=BROKER_TIMEOUT_SECONDS,
                socket_connect_timeout=BROKER_TIMEOUT_SECONDS,
            )
            if self.direct
            else None
        )

    def send(self, name: str, args: list[Any], headers: dict[str, str]) -> None:
        if self._client is None:
            self.app.send_task(name, args=args, headers=headers)
            return
        queue = _queue_of(self.app, name)
        self._client.lpush(queue, envelope(self.app, name, args, headers, queue))


def envelope(app: Celery, name: str, args: list[Any], headers: dict[str, str], queue: str) -> str:
    """What kombu's Redis channel writes for `send_task(name, args, headers=headers)`."""
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(
        task_id,
        name,
        args=args,
        kwargs={},
        ignore_result=None,
        argsrepr=_argsrepr(app, args),
        kwargsrepr="{}",
        origin=_origin(os.getpid()),
    )
    body = dumps(message.body).encode()
    return dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**message.headers, **headers},
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def _argsrepr(app: Celery, args: list[Any]) -> str | None:
    """`repr(args)` where it is what Celery's `saferepr` gives: short strings of id
    characters (saferepr quotes and escapes others its own way); otherwise None, for
    Celery to compute. saferepr costs ~35 us, most of as_task_v2."""
    if args and all(type(arg) is str and _ID.fullmatch(arg) for arg in args):
        text = repr(args)  # (no args: Celery shows `()`)
        if len(text) <= app.amqp.argsrepr_maxsize:
            return text
    return None


@functools.cache
def _origin(pid: int) -> str:
    """Celery's `origin` header (`anon_nodename()`: the host and this process's id),
    looked up once per process rather than per message."""
    return anon_nodename()


@functools.cache
def _queue_of(app: Celery, name: str) -> str:
    """The queue Celery's router gives the task (celeryconfig.task_routes)."""
    route = app.amqp.router.route({}, name)
    queue: str = route["queue"].name
    return queue
