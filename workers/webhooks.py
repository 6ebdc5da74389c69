"""Standard Webhooks signing and the one HTTP request per attempt.

The URL policy (`billing.webhook_urls`) runs again at send time on every address the
host resolves to, and the request then goes to the vetted address itself (the name
travels in the Host header and TLS SNI, so certificates are still checked against
it). A DNS answer that changes between the check and the connect (rebinding) cannot
send us anywhere the check did not see. No redirects, no proxies from the
environment.

One deadline bounds the whole attempt: connect, TLS, sending, the status line and
headers, and the few error-body bytes we keep. A per-read timeout alone would not: a
receiver that answers one byte at a time never lets a read wait long, and would hold a
worker thread (and, once its claim ran out, the next one) for as long as it liked. The
exchange runs on a short-lived event loop so the deadline can cancel it wherever it is.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from billing.errors import InvalidInput
from billing.webhook_urls import IPAddress, WebhookTarget, check_url, resolve_host
from billing.webhooks import SECRET_PREFIX, AttemptResult, Outgoing
from settings import get_settings

log = logging.getLogger(__name__)

USER_AGENT = "aijobs-webhooks/1"
ERROR_BODY_BYTES = 300


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64(HMAC-SHA256(base64-decoded secret, "id.timestamp.body"))."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(msg_id: str, timestamp: int, body: bytes, secrets: list[str]) -> dict[str, str]:
    """The three Standard Webhooks headers; one signature per secret, space-separated
    (current and, during a rotation's grace period, previous)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # We read at most ERROR_BODY_BYTES of an answer, raw: a compressed one is not
        # wanted (and not inflated if it comes anyway).
        "accept-encoding": "identity",
    }


def send(
    outgoing: Outgoing,
    *,
    timeout: float,
    allow_private: bool,
    deny_ports: frozenset[int] | None = None,
    resolve: Callable[[str, int], list[IPAddress]] = resolve_host,
    clock: Callable[[], float] = time.time,
) -> AttemptResult:
    """One attempt: check, sign, POST to the pinned address, all within `timeout`
    seconds. Never raises: the receiver's and the network's failures, and our own
    bugs, become the attempt's result. An attempt that raised would go unrecorded and
    be sent again by the requeue for ever.

    The DNS lookup counts against `timeout` but cannot be cut short (the system
    resolver bounds it). `deny_ports` defaults to WEBHOOK_DENY_PORTS, so every sender
    re-checks the stack's own ports without having to pass them."""
    started = time.monotonic()
    try:
        return _attempt(outgoing, timeout, allow_private, deny_ports, resolve, clock, started)
    except Exception as exc:
        log.exception("webhook %s: the sender raised", outgoing.delivery_id)
        return AttemptResult(
            status_code=None,
            latency_ms=_since(started),
            error=f"{type(exc).__name__} in the sender (logged for the operators)",
        )


def _attempt(
    outgoing: Outgoing,
    timeout: float,
    allow_private: bool,
    deny_ports: frozenset[int] | None,
    resolve: Callable[[str, int], list[IPAddress]],
    clock: Callable[[], float],
    started: float,
) -> AttemptResult:
    if deny_ports is None:
        deny_ports = get_settings().webhook_deny_ports
    try:
        target = check_url(
            outgoing.url,
            allow_private=allow_private,
            resolve=_strict(resolve),
            deny_ports=deny_ports,
        )
    except InvalidInput as exc:
        return AttemptResult(status_code=None, latency_ms=0, error=exc.message, refused=True)
    except LookupFailed as exc:
        return AttemptResult(status_code=None, latency_ms=0, error=f"DNS lookup failed: {exc}")
    headers = signed_headers(outgoing.delivery_id, int(clock()), outgoing.body, outgoing.secrets)
    headers["host"] = target.host_header
    answer = _Answer()
    try:
        asyncio.run(_post(target, headers, outgoing.body, started + timeout, answer))
    except TimeoutError:
        return AttemptResult(
            status_code=None,
            latency_ms=_since(started),
            error=f"Timeout: no answer within the {timeout:g} s deadline",
        )
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptResult(status_code=None, latency_ms=_since(started), error=error)
    except httpx.InvalidURL as exc:
        # Not an HTTPError: httpx will never send this URL, so retrying cannot help.
        return AttemptResult(
            status_code=None, latency_ms=_since(started), error=f"InvalidURL: {exc}", refused=True
        )
    latency = _since(started)
    response = answer.response
    assert response is not None
    if response.is_success:
        return AttemptResult(status_code=response.status_code, latency_ms=latency)
    error = f"HTTP {response.status_code}"
    if response.is_redirect:
        error += " (redirects are not followed)"
    if answer.snippet:
        error += ": " + bytes(answer.snippet[:ERROR_BODY_BYTES]).decode(errors="replace")
    if answer.cut:
        error += " (body cut at the deadline)"
    return AttemptResult(
        status_code=response.status_code,
        latency_ms=latency,
        error=error,
        retry_after=parse_retry_after(response.headers.get("retry-after"), clock()),
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every attempt, as httpx would build it (certifi's CAs, the
    environment ignored). Building it loads the CA bundle: about 28 ms of CPU, nearly
    all of what a send cost when each attempt's client built its own. Contexts are safe
    to share across threads; hostnames are still checked per connection, against the
    SNI name `_post` passes."""
    return httpx.create_ssl_context(trust_env=False)


@dataclass
class _Answer:
    """What `_post` got before the deadline: a response whose headers arrived counts,
    even if its error body was still trickling in."""

    response: httpx.Response | None = None
    snippet: bytearray = field(default_factory=bytearray)
    cut: bool = False


async def _post(
    target: WebhookTarget, headers: dict[str, str], body: bytes, deadline: float, answer: _Answer
) -> None:
    """The POST, and up to ERROR_BODY_BYTES of an error body as sent, before `deadline` (a
    `time.monotonic()` value, which is also the event loop's clock); a success's body is
    never read. Raises TimeoutError when no headers arrived in time."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        async with (
            asyncio.timeout(deadline - time.monotonic()),
            httpx.AsyncClient(
                verify=_tls_context(),
                follow_redirects=False,
                timeout=None,  # noqa: S113 - the deadline above bounds every step
                trust_env=False,
            ) as client,
            client.stream(
                "POST",
                _pinned(target, target.addresses[0]),
                content=body,
                headers=headers,
                extensions=extensions,
            ) as response,
        ):
            answer.response = response
            if not response.is_success:
                # Raw, not decoded: 200 KB of gzip inflates to 200 MB in one chunk.
                async for chunk in response.aiter_raw():
                    answer.snippet += chunk[: ERROR_BODY_BYTES - len(answer.snippet)]
                    if len(answer.snippet) >= ERROR_BODY_BYTES:
                        break
    except TimeoutError:
        if answer.response is None:
            raise
        answer.cut = True


class LookupFailed(Exception):
    """DNS did not answer: worth a retry, unlike an answer our policy refuses."""


def _strict(
    resolve: Callable[[str, int], list[IPAddress]],
) -> Callable[[str, int], list[IPAddress]]:
    """`resolve`, with failures raised past `check_url` (which reads them as "no
    address") so the attempt is retried rather than refused for good."""

    def wrapped(host: str, port: int) -> list[IPAddress]:
        try:
            return resolve(host, port)
        except OSError as exc:
            raise LookupFailed(str(exc) or type(exc).__name__) from exc

    return wrapped


def _pinned(target: WebhookTarget, address: IPAddress) -> str:
    """The URL with its host replaced by the vetted address."""
    parts = urlsplit(target.url)
    host = f"[{address}]" if address.version == 6 else str(address)
    return urlunsplit((target.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent
    or unreadable. ASCII digits only: `"²".isdigit()` is true, yet float() refuses it."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
