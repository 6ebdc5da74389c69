"""The delivery task called directly (no broker): claim, send to a real receiver,
record, decide the retry; 410, refused URLs, truncation, leases and stale attempts, the
attempt's deadline, redelivery."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from billing import accounts, webhooks
from billing.pricing import Usage
from billing.runs import cancel_job, complete_job, start_job
from billing.submission import JobRequest, submit_job
from billing.webhook_urls import UrlPolicy
from billing.webhooks import AttemptResult, Outgoing, Recorded
from models import Account, Job, WebhookAttempt, WebhookDelivery, as_utc, utcnow
from models.db import transaction
from tasks.webhooks import deliver, give_back
from tests.webhook_receiver import Receiver, Reply
from workers import webhook_slots

KEYWORDS = {"keywords": ["red shoes", "red boots"]}
DEV_URLS = UrlPolicy(allow_private=True)
LEASE, GRACE = timedelta(seconds=60), timedelta(hours=1)
SCHEDULE = (0.0, 0.0)  # as the `queued` fixture sets it: 3 attempts
SECOND = timedelta(seconds=1)


@pytest.fixture
def queued(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], Any]]:
    """Private URLs allowed, retries due at once, and the task's re-enqueues captured."""
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", "0,0")
    calls: list[tuple[list[str], Any]] = []
    monkeypatch.setattr(
        "tasks.webhooks.enqueue_webhooks",
        lambda ids, countdown=None: calls.append((list(ids), countdown)),
    )
    return calls


def new_account(endpoint: str | None = None) -> str:
    with transaction() as session:
        registration = accounts.register(
            session, f"{uuid.uuid4().hex[:10]}@example.com", "long enough", "", 14
        )
        registration.account.webhook_url = endpoint
        return registration.account.id


def cancelled_job(account_id: str, url: str | None = None) -> tuple[str, str | None]:
    """A job cancelled by its account, and the delivery its final state queued."""
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        job = submit_job(
            session,
            account,
            JobRequest(operation="clustering", input=KEYWORDS, webhook_url=url),
            timedelta(minutes=15),
            url_policy=DEV_URLS,
        ).job
        ending = cancel_job(session, account_id, job.id)
        return job.id, next(iter(ending.deliveries), None)


def delivery(delivery_id: str) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    with transaction() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        attempts = session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id)
        ).all()
        return row, list(attempts)


def claim(delivery_id: str, at: datetime) -> Outgoing | None:
    with transaction() as session:
        return webhooks.claim_attempt(session, delivery_id, at, LEASE, GRACE, SCHEDULE)


def record(
    outgoing: Outgoing, status: int, at: datetime, schedule: tuple[float, ...] = (0, 0)
) -> Recorded:
    """`outgoing`'s attempt answered `status` at `at` (schedule "0,0": 3 attempts)."""
    result = AttemptResult(status, 5, None if status == 200 else f"HTTP {status}")
    with transaction() as session:
        return webhooks.record_attempt(
            session, outgoing.delivery_id, outgoing.claim, result, at, schedule
        )


def secret_of(account_id: str) -> str:
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        return webhooks.get_or_create_secret(session, account)


def test_a_final_job_is_announced_signed_and_recorded(queued: list[Any]) -> None:
    account_id = new_account()
    with Receiver() as receiver:
        job_id, delivery_id = cancelled_job(account_id, receiver.url)
        assert delivery_id is not None
        assert delivery_id.startswith("msg_")

        assert deliver.run(delivery_id) == "done"
        assert deliver.run(delivery_id) == "skipped"

    (request,) = receiver.requests
    assert request.headers["webhook-id"] == delivery_id
    event = request.verify(secret_of(account_id))
    assert event["type"] == "job.cancelled"
    assert event["data"]["id"] == job_id
    assert event["data"]["status"] == "cancelled"
    assert event["data"]["error"]["code"] == "cancelled"
    assert set(event) == {"type", "timestamp", "data"}
    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 1, 200)
    assert [(a.status_code, a.error) for a in attempts] == [(200, None)]
    assert attempts[0].latency_ms >= 0
    assert queued == []


def test_a_job_without_any_url_queues_nothing(queued: list[Any]) -> None:
    _, delivery_id = cancelled_job(new_account())

    assert delivery_id is None


def test_failures_are_retried_with_the_same_id_until_attempts_run_out(queued: list[Any]) -> None:
    with Receiver(500, 502, Reply(503, {"retry-after": "0"}), 200) as receiver:
        _, delivery_id = cancelled_job(new_account(), receiver.url)
        assert delivery_id is not None

        results = [deliver.run(delivery_id) for _ in range(4)]

    assert results == ["retry", "retry", "done", "skipped"]  # schedule "0,0": 3 attempts
    assert len(queued) == 2
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery_id}
    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", 3, None)
    assert [a.status_code for a in attempts] == [500, 502, 503]
    assert attempts[0].error == "HTTP 500: ok"


def test_retry_after_delays_the_next_attempt(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", "1,1")
    with Receiver(Reply(429, {"retry-after": "120"})) as receiver:
        _, delivery_id = cancelled_job(new_account(), receiver.url)
        assert delivery_id is not None
        before = utcnow()

        assert deliver.run(delivery_id) == "retry"
        assert deliver.run(delivery_id) == "skipped"  # not due for two minutes

    ((ids, countdown),) = queued
    assert ids == [delivery_id]
    assert countdown >= 120
    row, _ = delivery(delivery_id)
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.replace(tzinfo=before.tzinfo) >= before + timedelta(seconds=120)


def test_410_disables_the_account_endpoint_until_it_is_set_again(queued: list[Any]) -> None:
    with Receiver(410) as receiver:
        account_id = new_account(endpoint=receiver.url)
        _, first = cancelled_job(account_id)
        assert first is not None

        assert deliver.run(first) == "done"
        _, second = cancelled_job(account_id)

    assert delivery(first)[0].status == "disabled"
    assert second is None  # the endpoint is off: nothing more is queued for it
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        assert account.webhook_url_disabled_at is not None
        webhooks.set_endpoint(session, account, receiver.url, DEV_URLS)
    _, third = cancelled_job(account_id)
    assert third is not None
    assert len(receiver.requests) == 1


def test_410_on_a_jobs_own_url_stops_it_for_good(queued: list[Any]) -> None:
    account_id = new_account()
    with Receiver(410) as receiver:
        _, delivery_id = cancelled_job(account_id, receiver.url)
        assert delivery_id is not None
        deliver.run(delivery_id)

        with transaction() as session, pytest.raises(webhooks.WebhookDisabled):
            webhooks.redeliver(session, account_id, delivery_id, utcnow())
        assert deliver.run(delivery_id) == "skipped"

    assert len(receiver.requests) == 1
    assert delivery(delivery_id)[0].status == "disabled"


def test_a_url_refused_at_send_time_fails_without_a_connection(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver() as receiver:
        _, delivery_id = cancelled_job(new_account(), receiver.url)
        assert delivery_id is not None
        monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "0")

        assert deliver.run(delivery_id) == "done"

    assert receiver.connections == 0
    row, attempts = delivery(delivery_id)
    assert row.status == "failed"
    assert len(attempts) == 1
    assert attempts[0].status_code is None
    assert "loopback" in (attempts[0].error or "")
    assert queued == []  # our own policy said no: retrying cannot help


def test_the_stacks_own_port_is_refused_at_send_time_with_private_urls_allowed(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL accepted before the port was on WEBHOOK_DENY_PORTS (the receiver stands in
    for Flower's API) is refused when sent, with no connection, and not retried."""
    with Receiver() as flower:
        _, delivery_id = cancelled_job(new_account(), f"{flower.url}/api/worker/shutdown/w")
        assert delivery_id is not None
        monkeypatch.setenv("WEBHOOK_DENY_PORTS", f"5000,{flower.port}")

        assert deliver.run(delivery_id) == "done"

    assert flower.connections == 0
    row, attempts = delivery(delivery_id)
    assert row.status == "failed"
    assert "belongs to this service's stack" in (attempts[0].error or "")
    assert queued == []


def test_a_url_stored_before_the_policy_refused_it_fails_once_instead_of_looping(
    queued: list[Any],
) -> None:
    """A DEL in the path passed the old policy and made every send raise InvalidURL:
    nothing was recorded and the requeue sent it again for ever. A row queued back then
    is refused at its next send."""
    _, delivery_id = cancelled_job(new_account(), "https://8.8.8.8/hook")
    assert delivery_id is not None
    with transaction() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        row.url = "https://8.8.8.8/hook\x7f"

    assert deliver.run(delivery_id) == "done"

    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "non-printable" in (attempts[0].error or "")
    assert queued == []


def test_a_retry_after_the_sender_cannot_read_is_recorded_and_retried(
    queued: list[Any],
) -> None:
    """`Retry-After: ²` made the send raise after the request: never recorded, resent
    for ever by the requeue. Now each attempt counts and they run out."""
    with Receiver(*[Reply(503, {"retry-after": "\u00b2"})] * 3) as receiver:
        _, delivery_id = cancelled_job(new_account(), receiver.url)
        assert delivery_id is not None

        results = [deliver.run(delivery_id) for _ in range(4)]

    assert results == ["retry", "retry", "done", "skipped"]
    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts) == ("failed", 3)
    assert [a.status_code for a in attempts] == [503, 503, 503]
    assert len(receiver.requests) == 3


def test_large_results_are_referenced_not_inlined(env: dict[str, str]) -> None:
    account_id = new_account(endpoint="https://hooks.example.com/in")
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        job_id = submit_job(
            session, account, JobRequest(operation="clustering", input=KEYWORDS), timedelta(hours=1)
        ).job.id
        run = start_job(session, job_id)
        assert run is not None
        result = {"clusters": [{"name": "x" * 100, "keywords": ["red shoes"]}] * 400}
        ending = complete_job(session, run, Usage(10, 10), result, [])
        assert ending
        delivery_id = next(iter(ending.deliveries), None)
        assert delivery_id is not None

    row, _ = delivery(delivery_id)
    assert row.payload["type"] == "job.succeeded"
    assert row.payload["data"]["result"] == {"truncated": True, "url": f"/v1/jobs/{job_id}"}
    assert row.payload["data"]["input"] == KEYWORDS
    assert len(webhooks.encode(row.payload)) < webhooks.MAX_PAYLOAD_BYTES
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.result == result  # the API still has it all


def test_an_attempt_is_claimed_by_one_worker_until_its_lease_ends(env: dict[str, str]) -> None:
    _, delivery_id = cancelled_job(new_account(), "https://hooks.example.com/in")
    assert delivery_id is not None
    now, lease, grace = utcnow(), timedelta(seconds=60), timedelta(hours=1)

    with transaction() as session:
        first = webhooks.claim_attempt(session, delivery_id, now, lease, grace, SCHEDULE)
    with transaction() as session:
        second = webhooks.claim_attempt(session, delivery_id, now, lease, grace, SCHEDULE)
        overdue_while_held = webhooks.overdue_delivery_ids(
            session, now + timedelta(seconds=40), timedelta(seconds=30)
        )
    with transaction() as session:
        # The first worker died mid-send: once its lease is over the attempt is free again.
        later = now + lease + timedelta(seconds=1)
        overdue = webhooks.overdue_delivery_ids(session, later, timedelta(seconds=30))
        third = webhooks.claim_attempt(session, delivery_id, later, lease, grace, SCHEDULE)

    assert first is not None
    assert first.url == "https://hooks.example.com/in"
    assert first.secrets[0].startswith("whsec_")
    assert second is None
    assert overdue_while_held == []
    assert overdue == [delivery_id]
    assert third is not None


class Killed(BaseException):
    """The worker process dies mid-send (OOM, SIGKILL): nothing after it runs."""


def test_an_event_that_kills_its_worker_every_time_runs_out_of_attempts(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing records such an attempt, so without counting lapsed leases the requeue
    would claim and send it again for ever (schedule "0,0": 3 attempts)."""
    sends: list[str] = []

    def dies(outgoing: Outgoing, **_: Any) -> AttemptResult:
        sends.append(outgoing.delivery_id)
        raise Killed

    monkeypatch.setattr("tasks.webhooks.send", dies)
    _, delivery_id = cancelled_job(new_account(), "https://8.8.8.8/hook")
    assert delivery_id is not None

    for _ in range(3):
        with pytest.raises(Killed):
            deliver.run(delivery_id)
        with transaction() as session:  # the lease runs out
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            row.claimed_until = utcnow() - SECOND
    assert deliver.run(delivery_id) == "skipped"

    assert len(sends) == 3
    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts, row.claimed_until) == ("failed", 3, None)
    assert [(a.status_code, a.error) for a in attempts] == [(None, webhooks.LAPSED)] * 3
    with transaction() as session:
        assert webhooks.overdue_delivery_ids(session, utcnow() + GRACE, SECOND) == []


def test_deliveries_whose_leases_lapsed_cannot_crowd_the_requeue_out(env: dict[str, str]) -> None:
    """Scaled down (the requeue takes 500 a minute): three deliveries whose workers died
    are older than another tenant's lost one, yet the lost one is taken first."""
    now = utcnow()
    dying = [cancelled_job(new_account(), "https://8.8.8.8/x")[1] for _ in range(3)]
    for delivery_id in dying:
        assert delivery_id is not None
        assert claim(delivery_id, now) is not None  # and nothing is ever recorded
    _, lost = cancelled_job(new_account(), "https://8.8.4.4/ok")
    later = now + LEASE + timedelta(seconds=60)

    with transaction() as session:
        picked = webhooks.overdue_delivery_ids(session, later, timedelta(seconds=30), limit=3)

    assert picked[0] == lost
    assert set(picked[1:]) < set(dying)


def test_the_lease_outlasts_the_attempts_deadline() -> None:
    for deadline in (1.0, 15.0, 120.0):
        assert webhooks.attempt_lease(deadline) >= timedelta(seconds=2 * deadline + 60)


def test_a_stale_attempt_never_overwrites_the_claim_holders_record(env: dict[str, str]) -> None:
    """A's lease runs out mid-send and B claims (A's lapse counts as an attempt); A's
    late 500 only logs itself (B keeps its claim: C cannot take it yet). B outlives its
    lease too and C claims; B's 200 is a delivery, and C's late 500 cannot turn it into
    a failure."""
    _, delivery_id = cancelled_job(new_account(), "https://hooks.example.com/in")
    assert delivery_id is not None
    t0 = utcnow()

    a = claim(delivery_id, t0)
    assert a is not None
    b = claim(delivery_id, t0 + LEASE + SECOND)
    assert b is not None
    assert record(a, 500, t0 + LEASE + 2 * SECOND) == Recorded("stale")
    assert claim(delivery_id, t0 + LEASE + 3 * SECOND) is None  # still B's
    row, _ = delivery(delivery_id)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.claimed_until is not None
    assert as_utc(row.claimed_until) == b.claim

    c = claim(delivery_id, t0 + 2 * LEASE + 2 * SECOND)
    assert c is not None
    assert record(b, 200, t0 + 2 * LEASE + 3 * SECOND) == Recorded("delivered")
    assert record(c, 500, t0 + 2 * LEASE + 4 * SECOND) == Recorded("stale")

    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 3, 200)
    assert (row.claimed_until, row.next_attempt_at) == (None, None)
    # Every send is logged, and so is each lease that ran out before its send was.
    assert [(x.status_code, x.error) for x in attempts] == [
        (None, webhooks.LAPSED),
        (500, "HTTP 500"),
        (None, webhooks.LAPSED),
        (200, None),
        (500, "HTTP 500"),
    ]
    assert claim(delivery_id, t0 + 4 * LEASE) is None


@pytest.mark.parametrize(
    ("holders_answer", "status_after", "late_outcome", "final_status"),
    [(500, "failed", "delivered", "succeeded"), (410, "disabled", "stale", "disabled")],
)
def test_a_late_2xx_counts_unless_the_url_is_gone(
    env: dict[str, str],
    holders_answer: int,
    status_after: str,
    late_outcome: str,
    final_status: str,
) -> None:
    """The holder's last attempt failed; the stale one that reached the receiver still
    delivered the event, but a 410 switched the URL off for good."""
    _, delivery_id = cancelled_job(new_account(), "https://hooks.example.com/in")
    assert delivery_id is not None
    t0 = utcnow()
    a = claim(delivery_id, t0)
    b = claim(delivery_id, t0 + LEASE + SECOND)
    assert a is not None
    assert b is not None

    assert record(b, holders_answer, t0 + LEASE + 2 * SECOND, schedule=()) == Recorded("given_up")
    assert delivery(delivery_id)[0].status == status_after
    assert record(a, 200, t0 + LEASE + 3 * SECOND) == Recorded(late_outcome)

    row, attempts = delivery(delivery_id)
    assert row.status == final_status
    assert [x.status_code for x in attempts] == [None, holders_answer, 200]  # None: A's lapse


def test_an_attempt_past_its_lease_that_nobody_took_over_still_counts(
    env: dict[str, str],
) -> None:
    _, delivery_id = cancelled_job(new_account(), "https://hooks.example.com/in")
    assert delivery_id is not None
    t0 = utcnow()
    a = claim(delivery_id, t0)
    assert a is not None

    assert record(a, 503, t0 + 2 * LEASE) == Recorded("retrying", 0.0)
    row, _ = delivery(delivery_id)
    assert (row.status, row.attempts, row.claimed_until) == ("pending", 1, None)


def test_a_trickling_receiver_is_cut_at_the_deadline_and_retried(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte every 0.2 s would take some 20 s; the attempt ends at its 1 s deadline
    (plus the two short transactions around it) as a timeout, to be retried."""
    monkeypatch.setenv("WEBHOOK_TIMEOUT_SECONDS", "1")
    with Receiver(Reply(200, trickle=0.2)) as receiver:
        _, delivery_id = cancelled_job(new_account(), receiver.url)
        assert delivery_id is not None
        started = time.monotonic()

        assert deliver.run(delivery_id) == "retry"
        took = time.monotonic() - started

    assert 1.0 <= took < 1.75
    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts, row.claimed_until) == ("pending", 1, None)
    (attempt,) = attempts
    assert attempt.status_code is None
    assert "Timeout" in (attempt.error or "")
    assert 1000 <= attempt.latency_ms < 1500
    assert queued == [([delivery_id], 0)]


def test_redelivering_a_failed_delivery_makes_one_more_attempt(queued: list[Any]) -> None:
    account_id = new_account()
    with Receiver(500, 500, 500, 200) as receiver:
        _, delivery_id = cancelled_job(account_id, receiver.url)
        assert delivery_id is not None
        while deliver.run(delivery_id) == "retry":
            pass
        assert delivery(delivery_id)[0].status == "failed"

        with transaction() as session:
            webhooks.redeliver(session, account_id, delivery_id, utcnow())
        assert deliver.run(delivery_id) == "done"

    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts) == ("succeeded", 4)
    assert [a.status_code for a in attempts] == [500, 500, 500, 200]
    with transaction() as session, pytest.raises(webhooks.NotFound):
        webhooks.redeliver(session, new_account(), delivery_id, utcnow())


def test_a_rotated_secret_keeps_signing_for_the_grace_period(env: dict[str, str]) -> None:
    account_id = new_account()
    grace = timedelta(hours=24)
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        old = webhooks.get_or_create_secret(session, account)
        rotated_at = utcnow()
        new = webhooks.rotate_secret(session, account, rotated_at)

        assert new != old
        assert webhooks.signing_secrets(account, rotated_at + timedelta(hours=1), grace) == [
            new,
            old,
        ]
        assert webhooks.signing_secrets(account, rotated_at + grace, grace) == [new]


def test_a_second_rotation_ends_the_first_ones_grace(env: dict[str, str]) -> None:
    """Documented, not a promise kept: only one previous secret is stored."""
    account_id = new_account()
    grace = timedelta(hours=24)
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        first = webhooks.get_or_create_secret(session, account)
        now = utcnow()
        second = webhooks.rotate_secret(session, account, now)
        third = webhooks.rotate_secret(session, account, now + timedelta(hours=1))

        assert first not in webhooks.signing_secrets(account, now + timedelta(hours=2), grace)
        assert webhooks.signing_secrets(account, now + timedelta(hours=2), grace) == [
            third,
            second,
        ]


# --- the per-endpoint cap (workers/webhook_slots.py) ---------------------------------


def deferrals() -> float:
    return REGISTRY.get_sample_value("aijobs_webhook_deferrals_total") or 0.0


def test_a_delivery_to_a_full_endpoint_is_parked_unsent_unclaimed_and_sent_when_a_slot_frees(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")
    account_id = new_account()
    with Receiver() as receiver:
        _, delivery_id = cancelled_job(account_id, receiver.url)
        assert delivery_id is not None
        busy = webhook_slots.take(
            receiver.url, tenant=account_id, cap=1, lease=30
        )  # another attempt's slot
        assert busy is not None
        counted, before = deferrals(), utcnow()

        assert deliver.run(delivery_id) == "deferred"

        assert receiver.connections == 0
        row, attempts = delivery(delivery_id)
        assert (row.status, row.attempts, row.claimed_until, attempts) == ("pending", 0, None, [])
        assert queued == []  # parked, not bounced through the broker
        assert row.next_attempt_at is not None
        wait = as_utc(row.next_attempt_at) - before
        park = timedelta(seconds=webhook_slots.PARK_SECONDS)
        assert park <= wait <= park + SECOND  # the requeue's fallback, should the wake be lost
        assert deferrals() == counted + 1
        with transaction() as session:
            assert delivery_id not in webhooks.overdue_delivery_ids(session, utcnow(), GRACE * 0)

        give_back(busy)  # the other attempt ends: its slot goes to the parked delivery
        assert queued == [([delivery_id], None)]
        assert deliver.run(delivery_id) == "done"

    (request,) = receiver.requests
    assert request.headers["webhook-id"] == delivery_id
    row, attempts = delivery(delivery_id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert [a.status_code for a in attempts] == [200]
    assert (
        webhook_slots.take(receiver.url, tenant=account_id, cap=1, lease=30) is not None
    )  # given back


def test_another_tenants_delivery_to_a_host_one_tenant_fills_is_sent_not_parked(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenants share receiver hosts (Zapier, Slack): one tenant holding every slot it may
    have there does not hold up another tenant's event to the same host."""
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")
    busy_account, other_account = new_account(), new_account()
    with Receiver() as receiver:
        _, busy_delivery = cancelled_job(busy_account, receiver.url)
        _, other_delivery = cancelled_job(other_account, receiver.url)
        assert busy_delivery is not None
        assert other_delivery is not None
        busy = webhook_slots.take(receiver.url, tenant=busy_account, cap=1, lease=30)
        assert busy is not None

        assert deliver.run(busy_delivery) == "deferred"
        assert deliver.run(other_delivery) == "done"

        give_back(busy)
        assert queued == [([busy_delivery], None)]
        assert deliver.run(busy_delivery) == "done"

    assert len(receiver.requests) == 2
    assert [delivery(d)[0].status for d in (busy_delivery, other_delivery)] == ["succeeded"] * 2


def test_an_attempt_holds_its_endpoints_slot_until_it_is_recorded(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a slow attempt is in flight, the next delivery to the same endpoint waits and
    one to another endpoint goes ahead."""
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")
    account_id = new_account()
    with Receiver(Reply(200, delay=1.0)) as slow, Receiver() as fast:
        (_, first), (_, second) = (cancelled_job(account_id, slow.url) for _ in range(2))
        _, other = cancelled_job(account_id, fast.url)
        assert first is not None
        assert second is not None
        assert other is not None
        results: list[str] = []
        running = threading.Thread(target=lambda: results.append(deliver.run(first)))
        running.start()
        slow.wait_for(1)

        assert deliver.run(second) == "deferred"
        assert deliver.run(other) == "done"
        running.join()

        assert results == ["done"]
        assert ([second], None) in queued  # woken by the first one's end
        assert deliver.run(second) == "done"

    assert [delivery(d)[0].status for d in (first, second, other)] == ["succeeded"] * 3
    assert len(slow.requests) == 2
    assert len(fast.requests) == 1


def test_a_slot_freed_between_the_refusal_and_the_parking_is_taken_at_once(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full when asked, free when parking (one step with the second ask): the delivery
    is sent now, not left parked with nobody to wake it."""
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")
    real = webhook_slots.take_for
    answers: list[str] = []

    def full_once(url: str, tenant: str, settings: Any, park: str | None = None) -> Any:
        answers.append("full" if not answers else "asked again")
        return None if len(answers) == 1 else real(url, tenant, settings, park=park)

    monkeypatch.setattr(webhook_slots, "take_for", full_once)
    account_id = new_account()
    with Receiver() as receiver:
        _, delivery_id = cancelled_job(account_id, receiver.url)
        assert delivery_id is not None

        assert deliver.run(delivery_id) == "done"

    assert answers == ["full", "asked again"]
    assert len(receiver.requests) == 1
    assert queued == []
    row, _ = delivery(delivery_id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert (
        webhook_slots.take(receiver.url, tenant=account_id, cap=1, lease=30) is not None
    )  # given back


def test_a_stale_entry_on_the_parked_list_does_not_use_up_a_freed_slots_wake_up(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery parked past PARK_SECONDS is sent by the requeue and, the endpoint still
    full, parked again: it is on the list twice. Once sent, its second entry is stale;
    the slot whose release pops it must wake the delivery parked behind it, not leave
    the endpoint idle while that one waits for the requeue."""
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")
    account_id = new_account()
    with Receiver() as receiver:
        (_, first), (_, second) = (cancelled_job(account_id, receiver.url) for _ in range(2))
        assert first is not None
        assert second is not None
        busy = webhook_slots.take(
            receiver.url, tenant=account_id, cap=1, lease=30
        )  # a hanging attempt's slot
        assert busy is not None
        assert deliver.run(first) == "deferred"
        # PARK_SECONDS later, still full: the requeue sends it, and it is parked again.
        with transaction() as session:
            session.get(WebhookDelivery, first).next_attempt_at = utcnow() - GRACE  # type: ignore[union-attr]
        with transaction() as session:
            assert first in webhooks.overdue_delivery_ids(session, utcnow(), timedelta(0))
        assert deliver.run(first) == "deferred"
        assert deliver.run(second) == "deferred"

        give_back(busy)  # wakes the first, which is sent and then frees the slot
        assert queued == [([first], None)]
        assert deliver.run(first) == "done"

        assert ([second], None) in queued  # not left parked behind the stale entry
        assert deliver.run(second) == "done"

    assert [delivery(d)[0].status for d in (first, second)] == ["succeeded"] * 2
    assert len(receiver.requests) == 2


def test_without_redis_deliveries_go_ahead_uncapped(
    queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_PER_ENDPOINT", "1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    with Receiver() as receiver:
        _, delivery_id = cancelled_job(new_account(), receiver.url)
        assert delivery_id is not None

        assert deliver.run(delivery_id) == "done"

    assert len(receiver.requests) == 1
