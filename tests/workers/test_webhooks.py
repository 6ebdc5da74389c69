"""Signing (checked by the independent `standardwebhooks` verifier) and the HTTP send:
pinned addresses, no redirects, the attempt's deadline, Retry-After, and the SSRF guard
at send time."""

from __future__ import annotations

import base64
import ipaddress
import ssl
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trustme
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from billing.webhooks import Outgoing, new_secret
from tests.webhook_receiver import Receiver, Reply
from workers import webhooks as webhooks_module
from workers.webhooks import ERROR_BODY_BYTES, parse_retry_after, send, sign, signed_headers

BODY = b'{"type":"job.succeeded","data":{"id":"job_1"}}'
LOOPBACK = ipaddress.ip_address("127.0.0.1")
# How far past its deadline an attempt may end (event loop start and teardown, a busy CI).
MARGIN = 0.5


def outgoing(url: str, *secrets: str) -> Outgoing:
    secrets_ = list(secrets) or [new_secret()]
    return Outgoing("msg_test1", url, BODY, secrets_, "acc_test1", claim=datetime.now(UTC))


def test_secrets_are_whsec_and_32_random_bytes() -> None:
    secret = new_secret()

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret


def test_signature_matches_the_reference_implementation() -> None:
    secret = new_secret()
    now = int(time.time())

    reference = Webhook(secret).sign("msg_1", datetime.fromtimestamp(now, UTC), BODY.decode())

    assert sign(secret, "msg_1", now, BODY) == reference
    headers = signed_headers("msg_1", now, BODY, [secret])
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "job.succeeded",
        "data": {"id": "job_1"},
    }


def test_tampered_body_wrong_secret_or_old_timestamp_fail_verification() -> None:
    secret = new_secret()
    headers = signed_headers("msg_1", int(time.time()), BODY, [secret])

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"succeeded", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})
    stale = signed_headers("msg_1", int(time.time()) - 600, BODY, [secret])
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, stale)


def test_during_a_rotation_both_secrets_sign() -> None:
    new, old = new_secret(), new_secret()

    headers = signed_headers("msg_1", int(time.time()), BODY, [new, old])

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_send_posts_the_signed_body_to_the_pinned_address() -> None:
    secret = new_secret()
    lookups: list[str] = []

    def resolve(host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        lookups.append(host)
        return [LOOPBACK]

    with Receiver() as receiver:
        url = f"http://hooks.customer.test:{receiver.port}/in?x=1"
        result = send(outgoing(url, secret), timeout=5, allow_private=True, resolve=resolve)

    assert result.ok
    assert result.status_code == 200
    assert result.latency_ms >= 0
    assert lookups == ["hooks.customer.test"]  # resolved once: the connection used that answer
    (request,) = receiver.requests
    assert request.path == "/in?x=1"
    assert request.headers["host"] == f"hooks.customer.test:{receiver.port}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == BODY
    assert request.verify(secret)["data"] == {"id": "job_1"}


def test_every_attempt_shares_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client built with the default `verify=True` loads the CA bundle each time
    (~28 ms of CPU of a ~30 ms send)."""
    contexts: list[object] = []
    client = httpx.AsyncClient

    def spy(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        contexts.append(kwargs.get("verify"))
        return client(*args, **kwargs)

    monkeypatch.setattr("workers.webhooks.httpx.AsyncClient", spy)
    with Receiver() as receiver:
        results = [send(outgoing(receiver.url), timeout=5, allow_private=True) for _ in range(2)]

    assert all(r.ok for r in results)
    first, second = contexts
    assert isinstance(first, ssl.SSLContext)
    assert first is second


@pytest.fixture
def tls_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver serving TLS with a certificate for hooks.customer.test only, signed by
    a throwaway CA that the sender's shared context is made to trust (as it trusts
    certifi's)."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.customer.test").configure_cert(server)
    trusting = httpx.create_ssl_context(trust_env=False)  # as the sender builds its own
    ca.configure_trust(trusting)
    monkeypatch.setattr(webhooks_module, "_tls_context", lambda: trusting)
    receiver = Receiver()
    receiver.server.socket = server.wrap_socket(receiver.server.socket, server_side=True)
    with receiver:
        yield receiver


def test_tls_goes_to_the_pinned_address_and_checks_the_certificate_against_the_name(
    tls_receiver: Receiver,
) -> None:
    def resolve(_host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [LOOPBACK]

    named = f"https://hooks.customer.test:{tls_receiver.port}/in"
    other = f"https://other.customer.test:{tls_receiver.port}/in"
    results = [
        send(outgoing(url), timeout=5, allow_private=True, resolve=resolve)
        for url in (named, named, other)
    ]

    assert [r.ok for r in results] == [True, True, False]
    assert "certificate" in (results[2].error or "").lower()
    assert [r.headers["host"] for r in tls_receiver.requests] == [
        f"hooks.customer.test:{tls_receiver.port}"
    ] * 2


def test_redirects_are_not_followed() -> None:
    with Receiver() as target, Receiver(Reply(302, {"location": target.url})) as receiver:
        result = send(outgoing(receiver.url), timeout=5, allow_private=True)

    assert result.status_code == 302
    assert not result.ok
    assert "redirects are not followed" in (result.error or "")
    assert target.connections == 0


def test_a_slow_receiver_times_out() -> None:
    with Receiver(Reply(200, delay=1.0)) as receiver:
        result = send(outgoing(receiver.url), timeout=0.3, allow_private=True)

    assert result.status_code is None
    assert "Timeout" in (result.error or "")
    assert not result.refused


@pytest.mark.parametrize(
    "reply",
    [Reply(200, trickle=0.2), Reply(200, trickle=0.05)],
    ids=["byte-per-200ms", "byte-per-50ms"],
)
def test_a_receiver_that_trickles_its_answer_is_cut_at_the_deadline(reply: Reply) -> None:
    """The status line and headers one byte at a time: no read ever waits long (a
    per-read timeout of a second would never fire), the whole answer would take 5-20 s."""
    with Receiver(reply) as receiver:
        started = time.monotonic()
        result = send(outgoing(receiver.url), timeout=1.0, allow_private=True)
        took = time.monotonic() - started

    assert 1.0 <= took < 1.0 + MARGIN
    assert result.status_code is None
    assert "Timeout" in (result.error or "")
    assert "1 s deadline" in (result.error or "")
    assert 1000 <= result.latency_ms < 1000 + MARGIN * 1000
    assert not result.refused
    assert len(receiver.requests) == 1


def test_an_error_body_that_trickles_is_cut_at_the_deadline_and_its_status_kept() -> None:
    reply = Reply(410, trickle=0.1, headers_first=True, body=b"gone " * 80)
    with Receiver(reply) as receiver:
        started = time.monotonic()
        result = send(outgoing(receiver.url), timeout=1.0, allow_private=True)
        took = time.monotonic() - started

    assert 1.0 <= took < 1.0 + MARGIN
    assert result.status_code == 410  # the status line came in time: the URL is gone
    assert (result.error or "").startswith("HTTP 410: gone")
    assert (result.error or "").endswith("(body cut at the deadline)")


def test_a_success_is_not_kept_waiting_for_its_body() -> None:
    reply = Reply(200, trickle=0.5, headers_first=True, body=b"x" * 100)
    with Receiver(reply) as receiver:
        started = time.monotonic()
        result = send(outgoing(receiver.url), timeout=5.0, allow_private=True)

    assert result.ok
    assert time.monotonic() - started < 0.5 + MARGIN


def test_an_error_body_is_read_no_further_than_its_snippet() -> None:
    with Receiver(Reply(500, body=b"e" * 100_000)) as receiver:
        result = send(outgoing(receiver.url), timeout=5.0, allow_private=True)

    assert result.error == "HTTP 500: " + "e" * ERROR_BODY_BYTES


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(size >> 20)) + packer.flush()


def test_a_compressed_error_body_is_neither_asked_for_nor_inflated() -> None:
    """A 50 KB gzip bomb that unpacks to 50 MB: the snippet is its first raw bytes, and
    the attempt's memory stays small (it was some 50 MB per attempt, 150 MB for 200 MB)."""
    bomb = gzip_of_zeros(50 << 20)
    with Receiver(Reply(500, {"content-encoding": "gzip"}, body=bomb)) as receiver:
        tracemalloc.start()
        try:
            result = send(outgoing(receiver.url), timeout=5.0, allow_private=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert receiver.requests[0].headers["accept-encoding"] == "identity"
    assert result.status_code == 500
    assert (result.error or "").startswith("HTTP 500: ")
    assert len(result.error or "") <= len("HTTP 500: ") + ERROR_BODY_BYTES
    assert peak < 5_000_000


def test_retry_after_is_read_in_seconds_or_as_a_date() -> None:
    with Receiver(Reply(503, {"retry-after": "7"})) as receiver:
        result = send(outgoing(receiver.url), timeout=5, allow_private=True)
    assert (result.status_code, result.retry_after) == (503, 7.0)

    now = time.time()
    assert parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT", now) > 2_000_000_000 - now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2", "\u00b9\u00b2\u00b3"])
def test_a_retry_after_of_non_ascii_digits_is_ignored_not_a_crash(value: str) -> None:
    """str.isdigit() says yes to superscript digits; float() says no."""
    with Receiver(Reply(503, {"retry-after": value})) as receiver:
        result = send(outgoing(receiver.url), timeout=5, allow_private=True)

    assert (result.status_code, result.retry_after) == (503, None)
    assert parse_retry_after(value, time.time()) is None


def test_a_url_httpx_will_not_send_is_a_refused_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx raises InvalidURL (not an HTTPError) for a DEL in the path; the policy now
    refuses such URLs first, so the pinned URL stands in for one it let through."""
    with Receiver() as receiver:
        monkeypatch.setattr("workers.webhooks._pinned", lambda *_: receiver.url + "\x7f")
        result = send(outgoing(receiver.url), timeout=5, allow_private=True)

    assert result.refused
    assert (result.error or "").startswith("InvalidURL")
    assert receiver.connections == 0


def test_anything_the_sender_raises_becomes_a_failed_attempt(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> str:
        raise RuntimeError("a bug of ours, with internal details")

    monkeypatch.setattr("workers.webhooks._pinned", broken)
    result = send(outgoing("http://127.0.0.1:9/hooks"), timeout=5, allow_private=True)

    assert not result.refused  # perhaps a passing fault: retried on the schedule
    assert result.status_code is None
    assert result.error == "RuntimeError in the sender (logged for the operators)"
    assert "internal details" in caplog.text


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "0177.0.0.1", "[::ffff:127.0.0.1]"],
)
def test_loopback_is_refused_at_send_time_without_a_connection(host: str) -> None:
    with Receiver() as receiver:
        url = f"http://{host}:{receiver.port}/hooks"
        result = send(outgoing(url), timeout=5, allow_private=False)

    assert result.refused
    assert result.status_code is None
    assert receiver.connections == 0


def test_a_name_that_resolves_to_loopback_is_refused_without_a_connection() -> None:
    def resolve(_host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("93.184.216.34"), LOOPBACK]

    with Receiver() as receiver:
        result = send(
            outgoing(f"http://rebind.test:{receiver.port}/"),
            timeout=5,
            allow_private=False,
            resolve=resolve,
        )

    assert result.refused
    assert "resolves to a non-public address" in (result.error or "")
    assert "127.0.0.1" not in (result.error or "")  # the tenant reads this in the attempt log
    assert receiver.connections == 0


def test_a_dns_failure_is_retryable_not_refused() -> None:
    def resolve(_host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        raise OSError("temporary failure in name resolution")

    result = send(
        outgoing("https://hooks.example.com/"), timeout=5, allow_private=False, resolve=resolve
    )

    assert not result.refused
    assert "DNS lookup failed" in (result.error or "")


def test_the_stacks_own_ports_are_refused_at_send_time_even_in_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A URL accepted before the deny list existed (or changed) is re-checked at send:
    the receiver stands in for Flower on a port `make run` lists in WEBHOOK_DENY_PORTS."""
    with Receiver() as flower:
        monkeypatch.setenv("WEBHOOK_DENY_PORTS", f"6379,{flower.port}")
        url = f"http://127.0.0.1:{flower.port}/api/worker/shutdown/worker@host"
        result = send(outgoing(url), timeout=5, allow_private=True)

    assert result.refused
    assert "belongs to this service's stack" in (result.error or "")
    assert flower.connections == 0


def test_a_name_resolving_to_cloud_metadata_is_refused_at_send_time_even_in_development() -> None:
    def resolve(_host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("169.254.169.254")]

    result = send(
        outgoing("http://looks-harmless.test/latest/meta-data/"),
        timeout=5,
        allow_private=True,
        resolve=resolve,
    )

    assert result.refused
    assert "non-public address" in (result.error or "")
    assert "169.254" not in (result.error or "")
