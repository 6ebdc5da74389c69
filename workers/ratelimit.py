"""The provider's rate limits, shared by every worker thread and process through Redis.

Per provider model, a sliding window (PROVIDER_RATE_WINDOW_SECONDS, 60) admits at most
PROVIDER_RPM requests and PROVIDER_TPM tokens (0 = no limit; PROVIDER_MODEL_LIMITS
overrides per model: `gpt-4o-mini=500/200000,dall-e-3=7/0`; an admin's override in Redis,
`PUT /v1/admin/provider-limits/<model>`, wins over both and reaches every worker at once).
A request counts the tokens the provider counts against it: the prompt's bound plus
`max_tokens`. Admission is one Lua script on Redis's clock, so every worker sees the
same window.

A provider 429 pauses the model for every worker (a Redis key that lives for the longest
of Retry-After, retry-after-ms and x-ratelimit-reset-requests/-tokens), not just the
thread that got it. A job the limiter says "not yet" to sleeps in its thread (waking for
a cancel) and tries again; it fails, uncharged, only after waiting
PROVIDER_RATE_MAX_WAIT_SECONDS in all. If Redis cannot answer, calls go ahead (logged):
the provider's own 429s still pace them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

import redis

from settings import Settings, get_settings

log = logging.getLogger(__name__)

# The longest single sleep: a cancel or a freed window is noticed at least this often.
MAX_SLEEP_SECONDS = 2.0
# A 429 without any reset header still pauses everyone this long.
DEFAULT_PAUSE_SECONDS = 1.0
# A window this much longer than configured absorbs the time between our admission and
# the request's arrival at the provider, whose clock decides (1.7% of a minute).
WINDOW_MARGIN_SECONDS = 1.0

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[4])
if paused > 0 then return paused end
local window, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, member = tonumber(ARGV[4]), ARGV[5]
local override = redis.call('HGET', KEYS[5], ARGV[6])
if override then
  local r, t = string.match(override, '^(%d+)/(%d+)$')
  rpm, tpm = tonumber(r), tonumber(t)
end
local horizon = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
if tpm > 0 then
  local freed = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)) do
    freed = freed + tonumber(string.match(m, ':(%d+)$'))
  end
  if freed > 0 then
    redis.call('DECRBY', KEYS[3], freed)
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  end
end
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used > 0 and used + tokens > tpm then
    local need, acc = used + tokens - tpm, 0
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      acc = acc + tonumber(string.match(entries[i], ':(%d+)$'))
      if acc >= need then return math.max(1, tonumber(entries[i + 1]) + window - now) end
    end
    return window
  end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, member .. ':' .. tokens)
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('PEXPIRE', KEYS[2], window)
  redis.call('PEXPIRE', KEYS[3], window)
end
return 0
"""
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return redis.call('PTTL', KEYS[1])
"""


class Sleeper(Protocol):
    def sleep(self, seconds: float) -> None: ...


class RateLimitWaitExceeded(Exception):
    """The limiter kept saying "not yet" for longer than PROVIDER_RATE_MAX_WAIT_SECONDS."""


@dataclass(frozen=True)
class Limits:
    rpm: int = 0
    tpm: int = 0


def parse_model_limits(raw: str) -> dict[str, Limits]:
    """`gpt-4o-mini=500/200000,dall-e-3=7/0` -> per-model limits (0: none)."""
    limits = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        model, _, values = part.partition("=")
        rpm, _, tpm = values.partition("/")
        try:
            limits[model.strip()] = Limits(int(rpm or 0), int(tpm or 0))
        except ValueError:
            raise ValueError(f"PROVIDER_MODEL_LIMITS: cannot read {part!r}") from None
    return limits


def limits_for(model: str, settings: Settings | None = None) -> Limits:
    settings = settings or get_settings()
    overrides = parse_model_limits(settings.provider_model_limits)
    return overrides.get(model, Limits(settings.provider_rpm, settings.provider_tpm))


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


OVERRIDES = "aijobs:provider-limits"


def _keys(model: str) -> list[str]:
    base = f"aijobs:provider:{model}"
    return [f"{base}:requests", f"{base}:tokens", f"{base}:tokens-total", f"{base}:pause"]


def _try(
    model: str, tokens: int, limits: Limits, window_ms: int, client: redis.Redis | None = None
) -> float:
    """0 if admitted now, else the seconds to wait (a pause, or a full window)."""
    client = client or _redis(get_settings().redis_url)
    member = secrets.token_hex(8)
    args = (window_ms, limits.rpm, limits.tpm, tokens, member, model)
    wait_ms = client.eval(_ADMIT, 5, *_keys(model), OVERRIDES, *args)
    return float(wait_ms) / 1000  # type: ignore[arg-type]


def overrides() -> dict[str, Limits]:
    """The admins' per-model overrides (they win over the env settings)."""
    raw = _redis(get_settings().redis_url).hgetall(OVERRIDES)
    return parse_model_limits(",".join(f"{k.decode()}={v.decode()}" for k, v in raw.items()))  # type: ignore[union-attr]


def set_override(model: str, limits: Limits | None) -> None:
    """Set (or, None, remove) an admin override for `model`; every worker applies it to
    its next request."""
    client = _redis(get_settings().redis_url)
    if limits is None:
        client.hdel(OVERRIDES, model)
    else:
        client.hset(OVERRIDES, model, f"{limits.rpm}/{limits.tpm}")


def effective_limits(model: str) -> Limits:
    return overrides().get(model) or limits_for(model)


def acquire(model: str, tokens: int, sleeper: Sleeper, settings: Settings | None = None) -> float:
    """Wait until `model` may take one more request of `tokens`; the seconds waited."""
    settings = settings or get_settings()
    limits = limits_for(model, settings)
    window_ms = math.ceil((settings.provider_rate_window_seconds + WINDOW_MARGIN_SECONDS) * 1000)
    client = _redis(settings.redis_url)
    started = time.monotonic()
    while True:
        try:
            wait = _try(model, tokens, limits, window_ms, client)
        except redis.RedisError as exc:
            log.warning("rate limiter unavailable (%s); calling %s without it", exc, model)
            return time.monotonic() - started
        if wait <= 0:
            return time.monotonic() - started
        waited = time.monotonic() - started
        if waited + wait > settings.provider_rate_max_wait_seconds:
            raise RateLimitWaitExceeded(
                f"waited {waited:.0f} s for {model}'s rate limit; giving up after "
                f"{settings.provider_rate_max_wait_seconds:.0f} s"
            )
        # Jitter, so threads woken by the same window do not all retry at once.
        sleeper.sleep(min(wait, MAX_SLEEP_SECONDS) + secrets.randbelow(100) / 1000)


def pause(model: str, seconds: float) -> None:
    """Hold every worker's calls to `model` for `seconds` (a 429 said so)."""
    try:
        _redis(get_settings().redis_url).eval(_PAUSE, 1, _keys(model)[3], math.ceil(seconds * 1000))
    except redis.RedisError as exc:
        log.warning("could not pause %s for %.1f s: %s", model, seconds, exc)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(text: str) -> float | None:
    """OpenAI's reset format: `1s`, `6m0s`, `17ms`, `1h2m3.5s`; or plain seconds."""
    text = text.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def reset_seconds(headers: Mapping[str, str]) -> float:
    """How long a 429 asks everyone to wait: the longest of its hints."""
    hints: list[float] = []
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "retry-after"):
        value = headers.get(name)
        seconds = _duration(value) if value else None
        if seconds is None and name == "retry-after" and value:
            try:  # an HTTP date
                seconds = max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None:
            hints.append(seconds)
    if ms := headers.get("retry-after-ms"):
        with contextlib.suppress(ValueError):
            hints.append(max(float(ms), 0.0) / 1000)
    return max(hints, default=DEFAULT_PAUSE_SECONDS)
