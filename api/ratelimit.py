"""Per-account request limits, counted in Redis, sized by the account's plan.

Checked after authentication, keyed by account id (not user, not IP), with no
bypass for authenticated callers; a 429 carries Retry-After.

Redis down: reads (GET/HEAD/OPTIONS) go through uncounted, with a warning at most every
`WARN_EVERY_SECONDS`, so dashboards and job polling keep working; writes get 503
`rate_limiter_unavailable` with Retry-After, because an unmetered write can cost money
(jobs, keyword research) and nothing could bound it until Redis is back.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time

from flask import request
from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from api.db import READ_METHODS
from api.errors import ApiError
from models import Account
from settings import get_settings

log = logging.getLogger(__name__)
# A dead or unreachable Redis must cost a request at most this, not a TCP timeout.
REDIS_TIMEOUT_SECONDS = 1.0
RETRY_AFTER_SECONDS = 5
WARN_EVERY_SECONDS = 10.0
_warned = {"at": -math.inf, "uncounted": 0}
_warned_lock = threading.Lock()


@functools.cache
def _limiter(redis_url: str) -> MovingWindowRateLimiter:
    storage = RedisStorage(
        redis_url,
        wrap_exceptions=True,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    return MovingWindowRateLimiter(storage)


def enforce(account: Account) -> None:
    settings = get_settings()
    if not settings.rate_limits_enabled:
        return
    per_minute = account.plan.requests_per_minute if account.plan else 60
    item = RateLimitItemPerMinute(per_minute)
    limiter = _limiter(settings.redis_url)
    try:
        if limiter.hit(item, "account", account.id):
            return
        reset = limiter.get_window_stats(item, "account", account.id).reset_time
    except StorageError as exc:
        _unavailable(exc)
        return
    retry_after = max(1, math.ceil(reset - time.time()))
    raise ApiError(
        429,
        "rate_limited",
        f"Too many requests: your plan allows {per_minute} per minute. Retry in {retry_after} s.",
        limit=per_minute,
        retry_after=retry_after,
    )


def _unavailable(exc: StorageError) -> None:
    """Fail open for reads (logged), closed for writes (503)."""
    if request.method not in READ_METHODS:
        log.warning("rate limiter unavailable, %s %s refused: %s", request.method, request.url, exc)
        raise ApiError(
            503,
            "rate_limiter_unavailable",
            "Request limits cannot be checked right now (Redis is unreachable); "
            "nothing was done. Please retry.",
            retry_after=RETRY_AFTER_SECONDS,
        )
    with _warned_lock:
        _warned["uncounted"] += 1
        if time.monotonic() - _warned["at"] < WARN_EVERY_SECONDS:
            return
        uncounted, _warned["uncounted"], _warned["at"] = _warned["uncounted"], 0, time.monotonic()
    log.warning(
        "rate limiter unavailable, reads allowed uncounted (%d since the last line): %s",
        uncounted,
        exc,
    )
