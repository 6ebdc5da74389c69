"""Per-account request limits, counted in Redis, sized by the account's plan.

Checked after authentication, keyed by account id (not user, not IP), with no
bypass for authenticated callers; a 429 carries Retry-After.
"""

from __future__ import annotations

import functools
import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from api.errors import ApiError
from models import Account
from settings import get_settings


@functools.cache
def _limiter(redis_url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(RedisStorage(redis_url))


def enforce(account: Account) -> None:
    settings = get_settings()
    if not settings.rate_limits_enabled:
        return
    per_minute = account.plan.requests_per_minute if account.plan else 60
    item = RateLimitItemPerMinute(per_minute)
    limiter = _limiter(settings.redis_url)
    if limiter.hit(item, "account", account.id):
        return
    reset = limiter.get_window_stats(item, "account", account.id).reset_time
    retry_after = max(1, math.ceil(reset - time.time()))
    raise ApiError(
        429,
        "rate_limited",
        f"Too many requests: your plan allows {per_minute} per minute. Retry in {retry_after} s.",
        limit=per_minute,
        retry_after=retry_after,
    )
