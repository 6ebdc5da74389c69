"""A per-endpoint cap on webhook attempts, shared by every worker thread and process.

At most WEBHOOK_MAX_PER_ENDPOINT attempts to one endpoint (scheme, host and port of the
URL) run at once. Without it, one tenant whose receiver hangs for the whole deadline and
who has thousands of events would hold every webhook thread, and every other tenant's
events would wait behind it. With it, that tenant's extra attempts are put back with a
short countdown (`DEFER_SECONDS`) and the threads go on to other endpoints.

The slots of an endpoint are a Redis sorted set of lease tokens scored by when the lease
ends (Redis's clock). One Lua script drops the ended leases, counts the live ones and
takes a slot if one is free, so a worker that was SIGKILLed mid-attempt gives its slot
back by itself once the attempt's deadline plus `LEASE_MARGIN_SECONDS` has passed; a
finished attempt releases it at once. If Redis cannot answer, attempts go ahead without
the cap (logged at most every `WARN_EVERY_SECONDS`), as the provider limiter does: a
hanging receiver slows others down, a missed webhook would be worse.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from settings import Settings, get_settings

log = logging.getLogger(__name__)

# A slot outlives its attempt's deadline by this much: the DNS lookup (which the deadline
# does not cut short) and the claim and record transactions around the send.
LEASE_MARGIN_SECONDS = 30.0
# An attempt that found its endpoint full is tried again after this many seconds.
DEFER_SECONDS = (2.0, 5.0)
WARN_EVERY_SECONDS = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""
_JITTER = random.Random()


def endpoint(url: str) -> str:
    """`scheme://host:port` of `url`, the port spelled out: what the cap counts by."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0  # not a URL the sender will call; it still gets a key of its own
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def key(url: str) -> str:
    return f"aijobs:webhook-endpoint:{endpoint(url)}"


def lease_seconds(deadline: float) -> float:
    """How long a slot is held at most: the attempt's deadline plus the margin."""
    return deadline + LEASE_MARGIN_SECONDS


@dataclass(frozen=True)
class Slot:
    """A slot taken at an endpoint; `token` None: taken without the cap (off, or no
    Redis), nothing to give back."""

    key: str
    token: str | None = None


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def take(url: str, *, cap: int, lease: float, client: redis.Redis | None = None) -> Slot | None:
    """A slot at `url`'s endpoint, or None if `cap` attempts there hold one already.
    `cap` 0 (or less) means no cap; without Redis every attempt gets a slot."""
    slot_key = key(url)
    if cap <= 0:
        return Slot(slot_key)
    token = secrets.token_hex(8)
    try:
        client = client or _redis(get_settings().redis_url)
        taken = client.eval(_TAKE, 1, slot_key, cap, math.ceil(lease * 1000), token)
    except redis.RedisError as exc:
        _warn(f"webhook endpoint cap unavailable ({exc}); sending without it")
        return Slot(slot_key)
    return Slot(slot_key, token) if taken else None


def release(slot: Slot, client: redis.Redis | None = None) -> None:
    """Give the slot back (once its attempt is recorded). If Redis cannot answer, its
    lease ends it instead."""
    if slot.token is None:
        return
    try:
        (client or _redis(get_settings().redis_url)).zrem(slot.key, slot.token)
    except redis.RedisError as exc:
        _warn(f"could not release a webhook slot at {slot.key} ({exc}); its lease will")


@contextmanager
def endpoint_slot(url: str, settings: Settings | None = None) -> Iterator[bool]:
    """True inside if the attempt to `url` may run now (released on the way out), False
    if its endpoint is full: the caller puts the attempt back, unsent."""
    settings = settings or get_settings()
    slot = take(
        url,
        cap=settings.webhook_max_per_endpoint,
        lease=lease_seconds(settings.webhook_timeout_seconds),
    )
    if slot is None:
        yield False
        return
    try:
        yield True
    finally:
        release(slot)


def defer_seconds(rng: random.Random = _JITTER) -> float:
    """When to try a deferred attempt again: jittered, so the deferred attempts of one
    endpoint do not all come back at once."""
    return rng.uniform(*DEFER_SECONDS)


_warned_at = -math.inf
_warn_lock = threading.Lock()


def _warn(message: str) -> None:
    """Log `message` at most every WARN_EVERY_SECONDS per process: with Redis down every
    attempt would say the same."""
    global _warned_at
    with _warn_lock:
        now = time.monotonic()
        if now - _warned_at < WARN_EVERY_SECONDS:
            return
        _warned_at = now
    log.warning(message)
