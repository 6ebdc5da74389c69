"""Sign-up and login throttles, counted in Redis (the `limits` library's moving windows,
plus a lockout counter).

- Register: per client address and per normalised email; at most
  `TRIALS_PER_ADDRESS_PER_DAY` free trials per address (a team in one office still fits).
- Login: per client address; per (email, address) a short lockout after
  `LOGIN_LOCKOUT_AFTER` failures, doubling with each further failure up to a cap; and a
  looser per-email cap on failures from addresses this email never logged in from.

An attacker guessing a password locks out only their own address for that email; the
per-email cap cannot shut the owner out of an address they have logged in from before,
and every window ends on its own. Over a limit: 429 `rate_limited` with `Retry-After`.
`AUTH_THROTTLE_ENABLED=0` switches all of it off (test rigs that register freely).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import redis
from flask import request
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from api.errors import ApiError
from billing.emails import normalize_email
from settings import Settings, get_settings

PREFIX = "aijobs:auth"
P = ParamSpec("P")
R = TypeVar("R")
KNOWN_ADDRESS_TTL = 90 * 24 * 3600  # an address this email logged in from, remembered
FAILURE_MEMORY = 24 * 3600  # failures of an (email, address) pair fade after a day


@functools.cache
def _limiter(redis_url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix=PREFIX))


@functools.cache
def _redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def client_address() -> str:
    """The caller's address (behind `TRUSTED_PROXIES` proxies, ProxyFix has set it)."""
    return request.remote_addr or "unknown"


def _email_key(email: str) -> str:
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]


def _hit(settings: Settings, rates: str, *identity: str, message: str) -> None:
    """Count one attempt against every window in `rates`; 429 when one is full."""
    limiter = _limiter(settings.redis_url)
    for item in parse_many(rates):
        if not limiter.hit(item, *identity):
            raise _throttled(message, _retry_after(limiter, item, identity))


def _retry_after(
    limiter: MovingWindowRateLimiter, item: RateLimitItem, identity: tuple[str, ...]
) -> int:
    reset = limiter.get_window_stats(item, *identity).reset_time
    return max(1, math.ceil(reset - time.time()))


def _throttled(message: str, retry_after: int) -> ApiError:
    return ApiError(
        429, "rate_limited", f"{message} Retry in {retry_after} s.", retry_after=retry_after
    )


def _throttle(check: Callable[Concatenate[Settings, P], R]) -> Callable[P, R | None]:
    """Run `check` with the settings unless throttles are off; Redis down is a 503
    (a missing throttle must not open the gates)."""

    @functools.wraps(check)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        settings = get_settings()
        if not settings.auth_throttle_enabled:
            return None
        try:
            return check(settings, *args, **kwargs)
        except redis.RedisError as exc:
            raise ApiError(
                503, "unavailable", "Sign-up and login are briefly unavailable; retry.",
                retry_after=1,
            ) from exc  # fmt: skip

    return wrapper


@_throttle
def check_register(settings: Settings, email: str) -> None:
    """Before a registration: the address's and the email's attempt windows."""
    _hit(
        settings, settings.register_rate_per_address, "register", "address", client_address(),
        message="Too many sign-ups from your network.",
    )  # fmt: skip
    _hit(
        settings, settings.register_rate_per_email, "register", "email", _email_key(email),
        message="Too many sign-up attempts for this email.",
    )  # fmt: skip


@_throttle
def claim_trial(settings: Settings) -> None:
    """A free trial was just created: count it against the address's daily allowance.
    Over it, 429 (the caller's transaction rolls back: no account, no credits)."""
    _hit(
        settings, f"{settings.trials_per_address_per_day}/day", "trial", "address",
        client_address(),
        message="No more free trials from your network today; a paid plan can still sign "
        "up (`plan` in the request).",
    )  # fmt: skip


@_throttle
def check_login(settings: Settings, email: str) -> None:
    """Before a password is checked: the address's window, the pair's lockout, and the
    email's failure cap (unless the owner has logged in from this address before)."""
    address, email_key = client_address(), _email_key(email)
    _hit(
        settings, settings.login_rate_per_address, "login", "address", address,
        message="Too many login attempts from your network.",
    )  # fmt: skip
    store = _redis(settings.redis_url)
    locked_ms = int(store.pttl(f"{PREFIX}:lock:{email_key}:{address}"))
    if locked_ms > 0:
        raise _throttled(
            "Too many wrong passwords for this email from your network.",
            max(1, math.ceil(locked_ms / 1000)),
        )
    if store.exists(f"{PREFIX}:known:{email_key}:{address}"):
        return
    limiter = _limiter(settings.redis_url)
    for item in parse_many(settings.login_failures_per_email):
        if not limiter.test(item, "login-failures", email_key):
            raise _throttled(
                "Too many wrong passwords for this email.",
                _retry_after(limiter, item, ("login-failures", email_key)),
            )


@_throttle
def login_failed(settings: Settings, email: str) -> int | None:
    """Count a wrong password; returns the lockout (seconds) it started, if any."""
    address, email_key = client_address(), _email_key(email)
    limiter = _limiter(settings.redis_url)
    for item in parse_many(settings.login_failures_per_email):
        limiter.hit(item, "login-failures", email_key)
    store = _redis(settings.redis_url)
    counter = f"{PREFIX}:failures:{email_key}:{address}"
    failures = int(store.incr(counter))
    store.expire(counter, FAILURE_MEMORY)
    beyond = failures - settings.login_lockout_after
    if beyond < 0:
        return None
    seconds = min(
        settings.login_lockout_seconds * 2 ** min(beyond, 20), settings.login_lockout_max_seconds
    )
    store.set(f"{PREFIX}:lock:{email_key}:{address}", 1, px=int(seconds * 1000))
    return int(seconds)


@_throttle
def login_succeeded(settings: Settings, email: str) -> None:
    """The right password: forget the pair's failures and remember the address."""
    address, email_key = client_address(), _email_key(email)
    store = _redis(settings.redis_url)
    store.delete(f"{PREFIX}:failures:{email_key}:{address}")
    store.set(f"{PREFIX}:known:{email_key}:{address}", 1, ex=KNOWN_ADDRESS_TTL)
