"""The AI provider client: the `openai` SDK, with tenacity owning the retries.

The same code talks to the bundled simulated provider (no OPENAI_API_KEY) and to the
real service: only the base URL and key differ. 429, 5xx, timeouts and connection
errors are retried with jittered exponential backoff that honours Retry-After;
4xx validation errors are not retried.

One client per process, shared by every worker thread, with an httpx connection pool
sized for WORKER_CONCURRENCY. The threads pool has no task time limits, so the call is
bounded here: each request by PROVIDER_TIMEOUT_SECONDS (the client's timeout), all
attempts together by PROVIDER_DEADLINE_SECONDS (no new attempt after it). Before each
attempt the caller's guard is asked whether the job was cancelled (a safe point).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import openai
from openai import OpenAI
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)

import metrics
from settings import Settings, get_settings
from workers import ratelimit
from workers.provider_usage import billed_tokens

log = logging.getLogger(__name__)
# A provider error code worth showing a tenant: an identifier, never free text.
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")

RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


# OpenAI answers a 429 with this code when the account's credit or quota is spent: it
# lasts until someone pays, so it is a failure at once, not a rate to wait out (retrying
# would take every job's full deadline and pause the model for every worker).
QUOTA_EXHAUSTED = "insufficient_quota"


class ProviderError(Exception):
    """The provider could not produce a usable answer; the job fails, the hold is released."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Guard(Protocol):
    """The job's safe points: `check` raises if it was cancelled; `sleep` waits, waking
    early on a cancel."""

    def check(self) -> None: ...

    def sleep(self, seconds: float) -> None: ...


class _NoGuard:
    def check(self) -> None:
        return None

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


NO_GUARD: Guard = _NoGuard()


@dataclass(frozen=True)
class ChatResult:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str


@functools.cache
def client(base_url: str, api_key: str, timeout: float, connections: int) -> OpenAI:
    """One per process and settings: every thread shares its connection pool."""
    http = httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    # max_retries=0: tenacity is the only retry loop, so attempts are counted once.
    return OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout, http_client=http
    )


def _client(settings: Settings | None = None) -> OpenAI:
    settings = settings or get_settings()
    return client(
        settings.openai_base_url,
        settings.openai_api_key,
        float(settings.provider_timeout_seconds),
        settings.worker_concurrency + 10,
    )


def _retry_after(exc: BaseException | None) -> float:
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        return max(float(header), 0.0) if header else 0.0
    except ValueError:
        return 0.0


class _Budget:
    """What one call may spend: PROVIDER_MAX_ATTEMPTS failures (a 429 is not one: the
    limiter paces the retry) and PROVIDER_DEADLINE_SECONDS (time spent waiting for the
    rate limiter does not count: a job waits its turn rather than failing)."""

    def __init__(self, max_attempts: int, deadline: float) -> None:
        self.max_attempts, self.deadline = max_attempts, deadline
        self.failures = 0
        self.limiter_wait = 0.0

    def stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, openai.RateLimitError):
            self.failures += 1
        spent = state.seconds_since_start - self.limiter_wait
        return self.failures >= self.max_attempts or spent > self.deadline


def _retrying(guard: Guard, budget: _Budget, settings: Settings, model: str) -> Retrying:
    backoff = wait_random_exponential(multiplier=0.25, max=settings.provider_retry_max_wait)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return max(backoff(state), min(_retry_after(exc), settings.provider_retry_max_wait))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("provider call failed (attempt %s): %r; retrying", state.attempt_number, exc)
        metrics.PROVIDER_RETRIES.labels(model).inc()

    return Retrying(
        retry=retry_if_exception_type(RETRYABLE),
        stop=budget.stop,
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
        sleep=guard.sleep,
    )


def _call(
    method: Callable[[OpenAI], Any], guard: Guard, model: str, tokens: int = 0, **kwargs: Any
) -> Any:
    """One provider call (`method` of the process's client) with its retries; before
    each attempt, a safe point (cancel) and the shared rate limiter. A 429 pauses
    `model` for every worker."""
    settings = get_settings()
    fn = method(_client(settings))
    budget = _Budget(settings.provider_max_attempts, settings.provider_deadline_seconds)

    def attempt() -> Any:
        guard.check()
        try:
            budget.limiter_wait += ratelimit.acquire(model, tokens, guard, settings)
        except ratelimit.RateLimitWaitExceeded as exc:
            raise ProviderError(
                "provider_rate_limited", f"Not sent to the AI provider: {exc}."
            ) from exc
        sent = time.monotonic()
        try:
            answer = fn(model=model, **kwargs)
        except openai.RateLimitError as exc:
            if exc.code == QUOTA_EXHAUSTED:
                _count_call(model, sent, "quota_exhausted")
                raise ProviderError(
                    "provider_quota_exhausted",
                    "The AI provider refused: its account is out of quota (billing), "
                    "not over a rate limit; retrying would not help.",
                ) from exc
            _count_call(model, sent, "rate_limited")
            ratelimit.pause(model, ratelimit.reset_seconds(exc.response.headers))
            raise
        except openai.APIStatusError as exc:
            _count_call(model, sent, f"http_{exc.status_code}")
            raise
        except openai.APIError as exc:
            _count_call(model, sent, type(exc).__name__)
            raise
        _count_call(model, sent, "ok")
        return answer

    try:
        return _retrying(guard, budget, settings, model)(attempt)
    except RETRYABLE as exc:
        raise ProviderError(
            "provider_unavailable",
            f"The AI provider failed after {budget.failures} attempts: {describe_error(exc)}",
        ) from exc
    except openai.APIStatusError as exc:
        raise ProviderError(
            "provider_rejected", f"The AI provider rejected the request: {describe_error(exc)}"
        ) from exc


def _count_call(model: str, sent: float, outcome: str) -> None:
    metrics.PROVIDER_CALLS.labels(model, outcome).inc()
    metrics.PROVIDER_LATENCY.labels(model).observe(time.monotonic() - sent)


def describe_error(exc: BaseException) -> str:
    """What the tenant reads (the job's error, its webhook): the HTTP status and the
    provider's error code only. The provider's own text can quote our API key (masked,
    but partly) or internal model names, so it goes to the log alone."""
    log.warning("provider error: %s", getattr(exc, "message", None) or exc)
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "code", None)
    named = f" ({code})" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
    return f"HTTP {status}{named}" if status else exc.__class__.__name__


def chat_messages(system: str, job_input: dict[str, Any]) -> list[dict[str, str]]:
    """Our prompt protocol: instructions in the system message, the input as JSON."""
    user = "Follow the instructions for this input.\nINPUT:\n" + json.dumps(
        job_input, ensure_ascii=False
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def chat(
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    guard: Guard = NO_GUARD,
    *,
    tokens: int = 0,
) -> ChatResult:
    """`tokens`: the most this request can count against a tokens-per-minute limit."""
    completion = _call(
        lambda sdk: sdk.chat.completions.create,
        guard,
        model,
        tokens,
        messages=messages,
        max_tokens=max_tokens,
        response_format={"type": "json_object"},
    )
    choice = completion.choices[0]
    text = choice.message.content or ""
    tokens_in, tokens_out = billed_tokens(completion.usage, messages, text, max_tokens)
    metrics.PROVIDER_TOKENS.labels(model, "input").inc(tokens_in)
    metrics.PROVIDER_TOKENS.labels(model, "output").inc(tokens_out)
    return ChatResult(
        text=text,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        finish_reason=choice.finish_reason or "stop",
    )


def generate_images(model: str, prompt: str, count: int, guard: Guard = NO_GUARD) -> list[str]:
    response = _call(lambda sdk: sdk.images.generate, guard, model, prompt=prompt, n=count)
    urls = [item.url for item in response.data or [] if item.url]
    if not urls:
        raise ProviderError("invalid_output", "The AI provider returned no images.")
    return urls[:count]
