"""Fault injection and request counters, shared by every stand-in.

Tests make a stand-in slow or failing in three ways: `SIM_LATENCY_MS` (every provider
call), the `X-Sim-Latency-Ms` / `X-Sim-Fail-Status` headers (one request), and queued
rules posted to `/_sim/faults` (the next `times` matching requests). A rule's `answer`
spoils a chat answer that is still billed: `overlong` runs past `max_tokens` (cut off,
finish_reason `length`), `not_json` is prose. `/_sim/stats` counts requests per kind and
the ones that failed.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from simulator.errors import (
    RequestError,
    error_response,
    int_field,
    json_object,
    json_response,
    no_content,
    raw_body,
)

logger = logging.getLogger(__name__)

MAX_LATENCY_MS = 600_000
ANSWERS = ("overlong", "not_json")

View = Callable[[], Response]


@dataclass
class FaultRule:
    """A queued fault: the next `times` matching requests get it."""

    id: int
    status: int | None
    times: int
    latency_ms: int
    match: str | None
    retry_after: float | None
    answer: str | None = None
    # The error body's `code` (default: the status's usual one), e.g. a 429
    # "insufficient_quota": the account is out of money, not over a rate.
    code: str | None = None


class FaultInjector:
    """The fault queue and request counters of one server (thread-safe)."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.base_latency_ms = _env_latency()
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_rule_id = 1
        self._counts = dict.fromkeys(kinds, 0)
        self._failed = 0

    def add_rule(
        self,
        status: int | None,
        times: int,
        latency_ms: int,
        match: str | None,
        retry_after: float | None,
        answer: str | None = None,
        code: str | None = None,
    ) -> FaultRule:
        with self._lock:
            rule = FaultRule(
                self._next_rule_id, status, times, latency_ms, match, retry_after, answer, code
            )
            self._next_rule_id += 1
            self._rules.append(rule)
            return FaultRule(**asdict(rule))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def begin_request(self, kind: str, raw_body: bytes, use_rules: bool) -> FaultRule | None:
        """Count a request and consume the first pending rule that applies to it."""
        text = raw_body.decode("utf-8", errors="replace")
        with self._lock:
            self._counts[kind] += 1
            if not use_rules:
                return None
            for index, rule in enumerate(self._rules):
                if rule.match is None or rule.match in text:
                    rule.times -= 1
                    if rule.times <= 0:
                        del self._rules[index]
                    return FaultRule(**asdict(rule))
        return None

    def record_failure(self) -> None:
        with self._lock:
            self._failed += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._counts),
                "failed": self._failed,
                "pending_faults": [asdict(rule) for rule in self._rules],
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)
            self._failed = 0


def _env_latency() -> int:
    raw = os.environ.get("SIM_LATENCY_MS", "0").strip() or "0"
    value = int(raw)
    if not 0 <= value <= MAX_LATENCY_MS:
        raise ValueError(f"SIM_LATENCY_MS must be between 0 and {MAX_LATENCY_MS}")
    return value


def injector() -> FaultInjector:
    faults: FaultInjector = current_app.extensions["simulator.faults"]
    return faults


def counted(kind: str, *, queued: bool = True) -> Callable[[View], View]:
    """Count the view's requests under `kind` and apply injected latency and failures.

    `queued`: queued rules and SIM_LATENCY_MS apply too (provider calls); the X-Sim headers
    always do. Any answer with status >= 400 counts as failed.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper() -> Response:
            faults = injector()
            rule = faults.begin_request(kind, raw_body(), queued)
            g.sim_answer = rule.answer if rule else None
            try:
                response = _injected_failure(faults, rule, queued) or view()
            except RequestError as exc:
                response = exc.response()
            except Exception:
                logger.exception("simulated provider failed on %s", request.path)
                response = error_response(500, "The simulated provider hit an internal error.")
            if response.status_code >= 400:
                faults.record_failure()
            return response

        return wrapper

    return decorate


def _injected_failure(
    faults: FaultInjector, rule: FaultRule | None, queued: bool
) -> Response | None:
    """Sleep the injected latency; the error response to send instead, if one is due."""
    latency_ms = faults.base_latency_ms if queued else 0
    latency_ms += _header_int("X-Sim-Latency-Ms", 0, MAX_LATENCY_MS) or 0
    status, retry_after, code = None, None, None
    if rule is not None:
        latency_ms += rule.latency_ms
        status, retry_after, code = rule.status, rule.retry_after, rule.code
    header_status = _header_int("X-Sim-Fail-Status", 400, 599)
    if header_status is not None:
        status, retry_after, code = header_status, None, None
    if latency_ms:
        time.sleep(latency_ms / 1000)
    if status is None:
        return None
    headers = () if retry_after is None else (("Retry-After", _format_seconds(retry_after)),)
    message = f"Simulated failure with status {status}."
    return error_response(status, message, code, headers=headers)


def _header_int(name: str, low: int, high: int) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise RequestError(400, f"Header {name} must be an integer between {low} and {high}.")
    return value


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


control = Blueprint("control", __name__, url_prefix="/_sim")


@control.post("/faults")
def add_fault() -> Response:
    payload = json_object()
    status = payload.get("status")
    if status is not None:
        status = int_field(payload, "status", None, 400, 599)
    times = int_field(payload, "times", 1, 1, 1_000_000) or 1
    latency_ms = int_field(payload, "latency_ms", 0, 0, MAX_LATENCY_MS) or 0
    match = payload.get("match")
    if match is not None and not isinstance(match, str):
        raise RequestError(400, "'match' must be a string or null.")
    retry_after = payload.get("retry_after")
    if retry_after is not None and (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, int | float)
        or not 0 <= retry_after <= 86_400
    ):
        raise RequestError(400, "'retry_after' must be a number of seconds or null.")
    answer = payload.get("answer")
    if answer is not None and answer not in ANSWERS:
        raise RequestError(400, f"'answer' must be one of {list(ANSWERS)} or null.")
    code = payload.get("code")
    if code is not None and not (isinstance(code, str) and 0 < len(code) <= 100):
        raise RequestError(400, "'code' must be a short string or null.")
    rule = injector().add_rule(status, times, latency_ms, match, retry_after, answer, code)
    return json_response(201, asdict(rule))


@control.delete("/faults")
def clear_faults() -> Response:
    injector().clear_rules()
    return no_content()


@control.get("/stats")
def stats() -> Response:
    return json_response(200, injector().stats())


@control.delete("/stats")
def reset_stats() -> Response:
    injector().reset_stats()
    return no_content()
