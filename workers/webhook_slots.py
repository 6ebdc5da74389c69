"""A per-tenant, per-endpoint cap on webhook attempts, shared by every worker thread and
process.

At most WEBHOOK_MAX_PER_ENDPOINT attempts of one account to one endpoint (scheme, host and
port of the URL) run at once. Without it, one tenant whose receiver hangs for the whole
deadline and who has thousands of events would hold every webhook thread, and every other
tenant's events would wait behind it. With it, that tenant's extra attempts wait, parked,
in its Redis list for the endpoint, and the threads go on. The cap is the tenant's, not
the host's: many tenants send to the same receiver hosts (Zapier, Slack), and one
tenant's backlog there must not hold up another's events to it. A finished attempt
gives its slot back and takes the endpoint's oldest parked delivery off the list in one
step, for the caller to send: the endpoint's backlog moves one delivery per freed slot,
with no polling (a countdown per parked delivery would put thousands of messages a
second through the broker). Taking a slot and parking are one step too, so a slot freed
meanwhile always finds the delivery on the list. A delivery whose wake-up is lost (Redis
restarted empty) is sent by the periodic requeue after `PARK_SECONDS`.

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
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from settings import Settings, get_settings

log = logging.getLogger(__name__)

# A slot outlives its attempt's deadline by this much: the DNS lookup (which the deadline
# does not cut short) and the claim and record transactions around the send.
LEASE_MARGIN_SECONDS = 30.0
# A parked delivery not woken by then (its wake-up lost) is resent by the periodic
# requeue; parking moves its `next_attempt_at` this far on.
PARK_SECONDS = 600.0
WARN_EVERY_SECONDS = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}

# KEYS: the endpoint's slots, its parked deliveries. ARGV: cap, lease ms, token, and
# the delivery to park if no slot is free ('' to park none).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then
  if ARGV[4] ~= '' then
    redis.call('RPUSH', KEYS[2], ARGV[4])
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""
# KEYS: the endpoint's slots, its parked deliveries. ARGV: the token. The next delivery.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('LPOP', KEYS[2])
"""


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


def key(url: str, tenant: str) -> str:
    """The slots of `tenant` (an account id) at `url`'s endpoint."""
    return f"aijobs:webhook-endpoint:{tenant}:{endpoint(url)}"


def parked_key(url: str, tenant: str) -> str:
    """The deliveries of `tenant` parked until one of its slots there frees."""
    return f"aijobs:webhook-parked:{tenant}:{endpoint(url)}"


def lease_seconds(deadline: float) -> float:
    """How long a slot is held at most: the attempt's deadline plus the margin."""
    return deadline + LEASE_MARGIN_SECONDS


@dataclass(frozen=True)
class Slot:
    """A slot `tenant` took at an endpoint; `token` None: taken without the cap (off, or
    no Redis), nothing to give back."""

    url: str
    tenant: str
    token: str | None = None


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def take(
    url: str,
    *,
    tenant: str,
    cap: int,
    lease: float,
    park: str | None = None,
    client: redis.Redis | None = None,
) -> Slot | None:
    """A slot of `tenant` at `url`'s endpoint, or None if `cap` of its attempts there hold
    one already; then the delivery `park` (if given) is put on its list in the same step.
    `cap` 0 (or less) means no cap; without Redis every attempt gets a slot."""
    if cap <= 0:
        return Slot(url, tenant)
    token = secrets.token_hex(8)
    keys = (key(url, tenant), parked_key(url, tenant))
    # The list outlives the longest a delivery stays parked; a forgotten one then expires.
    ttl = math.ceil(4 * PARK_SECONDS * 1000)
    try:
        client = client or _redis(get_settings().redis_url)
        taken = client.eval(_TAKE, 2, *keys, cap, math.ceil(lease * 1000), token, park or "", ttl)
    except redis.RedisError as exc:
        _warn(f"webhook endpoint cap unavailable ({exc}); sending without it")
        return Slot(url, tenant)
    return Slot(url, tenant, token) if taken else None


def release(slot: Slot, client: redis.Redis | None = None) -> str | None:
    """Give the slot back (once its attempt is recorded) and take the endpoint's oldest
    parked delivery off its list: the caller wakes it. If Redis cannot answer, the
    slot's lease ends it and the parked deliveries wait for the periodic requeue."""
    if slot.token is None:
        return None
    try:
        client = client or _redis(get_settings().redis_url)
        keys = (key(slot.url, slot.tenant), parked_key(slot.url, slot.tenant))
        parked = client.eval(_RELEASE, 2, *keys, slot.token)
    except redis.RedisError as exc:
        _warn(f"could not release a webhook slot at {endpoint(slot.url)} ({exc}); its lease will")
        return None
    return parked.decode() if isinstance(parked, bytes) else parked


def next_parked(slot: Slot, client: redis.Redis | None = None) -> str | None:
    """The endpoint's next parked delivery, for a released slot whose first one woke
    nothing (its entry was stale); None if none is parked or Redis cannot answer."""
    if slot.token is None:
        return None
    try:
        client = client or _redis(get_settings().redis_url)
        parked = client.lpop(parked_key(slot.url, slot.tenant))
    except redis.RedisError as exc:
        _warn(f"could not read parked webhooks at {endpoint(slot.url)} ({exc})")
        return None
    return parked.decode() if isinstance(parked, bytes) else parked


def take_for(url: str, tenant: str, settings: Settings, park: str | None = None) -> Slot | None:
    """`take` with the settings' cap and a lease of the attempt's deadline plus margin."""
    return take(
        url,
        tenant=tenant,
        cap=settings.webhook_max_per_endpoint,
        lease=lease_seconds(settings.webhook_timeout_seconds),
        park=park,
    )


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
