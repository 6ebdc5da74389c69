"""The provider's rate limits, enforced like the real service: per model, at most `rpm`
requests and `tpm` tokens (prompt + max_tokens, as OpenAI counts them) in any sliding
window of `window_seconds` (60; tests shorten it). Over a limit: 429 with Retry-After
and x-ratelimit-reset-requests / -tokens, before any latency.

Configured by env (SIM_RPM, SIM_TPM, SIM_RATE_WINDOW_SECONDS; 0 = no limit) or
`PUT /_sim/ratelimit {"rpm", "tpm", "window_seconds"}`. `GET /_sim/ratelimit` reports,
per model, the requests accepted and the most accepted in any one window, so a test can
prove that no more than N calls reached the provider in any minute.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, request

from simulator.answers import prompt_tokens
from simulator.errors import RequestError, error_response, json_object, json_response, no_content

View = Callable[[], Response]


@dataclass
class _ModelLog:
    accepted: list[float] = field(default_factory=list)  # arrival times, in order
    window: deque[tuple[float, int]] = field(default_factory=deque)  # (time, tokens)
    max_tokens_in_window: int = 0


def _env_int(name: str) -> int:
    return int(os.environ.get(name, "0").strip() or "0")


class RateLimits:
    """Per-model sliding windows and the log of accepted requests (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rpm = _env_int("SIM_RPM")
        self.tpm = _env_int("SIM_TPM")
        self.window_seconds = float(os.environ.get("SIM_RATE_WINDOW_SECONDS", "60") or 60)
        self._models: dict[str, _ModelLog] = {}
        self.rejected = 0

    def configure(self, rpm: int, tpm: int, window_seconds: float) -> None:
        with self._lock:
            self.rpm, self.tpm, self.window_seconds = rpm, tpm, window_seconds
            self._models.clear()
            self.rejected = 0

    def reset(self) -> None:
        with self._lock:
            self._models.clear()
            self.rejected = 0

    def admit(self, model: str, tokens: int) -> tuple[float, float] | None:
        """None if the request may go on, else (seconds until a request slot frees,
        seconds until enough tokens free)."""
        now = time.monotonic()
        with self._lock:
            log = self._models.setdefault(model, _ModelLog())
            while log.window and log.window[0][0] <= now - self.window_seconds:
                log.window.popleft()
            used = sum(t for _, t in log.window)
            wait_requests = wait_tokens = 0.0
            if self.rpm and len(log.window) >= self.rpm:
                wait_requests = log.window[0][0] + self.window_seconds - now
            if self.tpm and log.window and used + tokens > self.tpm:
                freed, need = 0, used + tokens - self.tpm
                for when, spent in log.window:
                    freed += spent
                    if freed >= need:
                        wait_tokens = when + self.window_seconds - now
                        break
            if wait_requests or wait_tokens:
                self.rejected += 1
                return wait_requests, wait_tokens
            log.window.append((now, tokens))
            log.accepted.append(now)
            log.max_tokens_in_window = max(log.max_tokens_in_window, used + tokens)
            return None

    def report(self) -> dict[str, Any]:
        with self._lock:
            models = {
                model: {
                    "accepted": len(log.accepted),
                    "max_requests_in_window": _max_in_window(log.accepted, self.window_seconds),
                    "max_tokens_in_window": log.max_tokens_in_window,
                }
                for model, log in self._models.items()
            }
            return {
                "rpm": self.rpm,
                "tpm": self.tpm,
                "window_seconds": self.window_seconds,
                "rejected": self.rejected,
                "models": models,
            }


def _max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any half-open window [t, t + window)."""
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def limits() -> RateLimits:
    found: RateLimits = current_app.extensions["simulator.ratelimits"]
    return found


def rate_limited(view: View) -> View:
    """Refuse, with the real service's 429, a request over its model's limits; applied
    on arrival, before any injected latency."""

    @functools.wraps(view)
    def wrapper() -> Response:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return view()
        model = str(payload.get("model") or "dall-e-3")
        tokens = 0
        if isinstance(payload.get("messages"), list):
            limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or 0
            messages = [m for m in payload["messages"] if isinstance(m, dict)]
            tokens = prompt_tokens(messages) + (limit if isinstance(limit, int) else 0)
        refused = limits().admit(model, tokens)
        if refused is None:
            return view()
        wait_requests, wait_tokens = refused
        headers = (
            ("Retry-After", str(max(1, math.ceil(max(refused))))),
            ("x-ratelimit-reset-requests", f"{wait_requests:.3f}s"),
            ("x-ratelimit-reset-tokens", f"{wait_tokens:.3f}s"),
        )
        which = "requests" if wait_requests else "tokens"
        message = f"Rate limit reached for {model} ({which} per window). Please try again later."
        return error_response(429, message, "rate_limit_exceeded", headers=headers)

    return wrapper


control = Blueprint("ratelimit_control", __name__, url_prefix="/_sim")


@control.get("/ratelimit")
def report() -> Response:
    return json_response(200, limits().report())


@control.put("/ratelimit")
def configure() -> Response:
    payload = json_object()
    values = []
    for name, default in (("rpm", 0), ("tpm", 0), ("window_seconds", 60)):
        value = payload.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise RequestError(400, f"'{name}' must be a non-negative number.")
        values.append(value)
    rpm, tpm, window = values
    if window <= 0:
        raise RequestError(400, "'window_seconds' must be positive.")
    limits().configure(int(rpm), int(tpm), float(window))
    return json_response(200, limits().report())


@control.delete("/ratelimit")
def reset() -> Response:
    limits().reset()
    return no_content()
