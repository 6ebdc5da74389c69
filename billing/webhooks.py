"""Webhook events: which URL hears about what, the payload, secrets, and the delivery
record with its retry rules.

An event becomes a `WebhookDelivery` row in the same transaction as the change it
announces (a job's final state, a trial expiry), so it can never be lost between the
commit and the broker; the Celery send happens after commit, and the periodic sweep
requeues anything whose message went missing. The HTTP side is `workers/webhooks.py`.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from billing.errors import Conflict, NotFound
from billing.job_views import get_job, job_view
from billing.webhook_urls import UrlPolicy
from models import Account, AutomationRun, Job, WebhookAttempt, WebhookDelivery, as_utc

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
JOB_EVENTS = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
ACCOUNT_EVENTS = ("account.trial_ending", "account.suspended", "account.payment_due")
MAX_PAYLOAD_BYTES = 20_000
# A Retry-After beyond this is treated as this: the delivery is given up on after a day.
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
# Our send-side clock and a countdown's ETA may differ a little; an attempt this early
# still counts as due.
DUE_SLACK = timedelta(seconds=5)
_JITTER = random.Random()
LAPSED = "No result within the attempt's lease: the sending worker stopped or crashed."


class WebhookDisabled(Conflict):
    code = "webhook_disabled"


# --- secrets ------------------------------------------------------------------------


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes, the Standard Webhooks secret format."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def get_or_create_secret(session: Session, account: Account) -> str:
    """The account's signing secret, created on first use so every delivery is signed."""
    if account.webhook_secret is None:
        session.execute(
            update(Account)
            .where(Account.id == account.id, Account.webhook_secret.is_(None))
            .values(webhook_secret=new_secret())
            .execution_options(synchronize_session=False)
        )
        session.refresh(account)
    assert account.webhook_secret is not None
    return account.webhook_secret


def rotate_secret(session: Session, account: Account, now: datetime) -> str:
    """A new secret; the old one keeps signing for the grace period (see `signing_secrets`).

    One previous secret is kept: a second rotation within the grace drops the secret
    from before the first at once, ending the grace the first one promised (the README
    says so)."""
    previous = get_or_create_secret(session, account)
    account.webhook_secret_previous = previous
    account.webhook_secret = new_secret()
    account.webhook_secret_rotated_at = now
    session.flush()
    return account.webhook_secret


def signing_secrets(account: Account, now: datetime, grace: timedelta) -> list[str]:
    """Newest first: the current secret, plus the previous one within the grace period,
    so a receiver that has not switched yet still finds a signature it can check."""
    keys = [account.webhook_secret] if account.webhook_secret else []
    rotated = account.webhook_secret_rotated_at
    if account.webhook_secret_previous and rotated and now - as_utc(rotated) < grace:
        keys.append(account.webhook_secret_previous)
    return keys


def set_endpoint(session: Session, account: Account, url: str | None, policy: UrlPolicy) -> None:
    """The account's default URL (for jobs without their own); None clears it.

    Setting a URL also re-enables an endpoint that a 410 had disabled.
    """
    if url is not None:
        policy.check(url, must_resolve=False)
    account.webhook_url = url
    account.webhook_url_disabled_at = None
    session.flush()


def endpoint_view(account: Account) -> dict[str, Any]:
    disabled = account.webhook_url_disabled_at
    return {
        "url": account.webhook_url,
        "disabled_at": as_utc(disabled).isoformat() if disabled else None,
    }


# --- events -------------------------------------------------------------------------


def queue_job_event(session: Session, job_id: str, now: datetime) -> str | None:
    """Record the event for a job that just reached a final state; its delivery id, or
    None when no URL wants it. Call in the transaction that made the state final."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status not in JOB_EVENTS:
        return None
    account = session.get(Account, job.account_id)
    assert account is not None
    target = _target(account, job.webhook_url)
    if target is None:
        return None
    url, to_account_endpoint = target
    event_type = JOB_EVENTS[job.status]
    if session.scalar(
        select(WebhookDelivery.id).where(
            WebhookDelivery.job_id == job.id, WebhookDelivery.event_type == event_type
        )
    ):
        return None  # already announced; a job ends once
    delivery = WebhookDelivery(
        account_id=account.id,
        job_id=job.id,
        event_type=event_type,
        url=url,
        to_account_endpoint=to_account_endpoint,
        payload=job_payload(event_type, job, now),
        next_attempt_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery.id


def _target(account: Account, url: str | None) -> tuple[str, bool] | None:
    """Where an event goes: its own URL, else the account's enabled endpoint, else
    nowhere; and whether that is the account's endpoint."""
    if url:
        return url, False
    if account.webhook_url and account.webhook_url_disabled_at is None:
        return account.webhook_url, True
    return None


def queue_automation_event(
    session: Session, run: AutomationRun, data: dict[str, Any], now: datetime
) -> str | None:
    """Record `automation.<status>` for a run that just ended (once per run and type,
    a unique index says so); its delivery id, or None when no URL wants it."""
    account = session.get(Account, run.account_id)
    assert account is not None
    target = _target(account, run.webhook_url)
    if target is None:
        return None
    event_type = f"automation.{run.status}"
    delivery = WebhookDelivery(
        account_id=account.id,
        automation_id=run.id,
        event_type=event_type,
        url=target[0],
        to_account_endpoint=target[1],
        payload=event_payload(event_type, data, now),
        next_attempt_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery.id


def queue_account_event(
    session: Session, account: Account, event_type: str, data: dict[str, Any], now: datetime
) -> str | None:
    """An account event (`account.*`) for the account's default URL, if it has one."""
    if event_type not in ACCOUNT_EVENTS:
        raise ValueError(f"unknown account event {event_type!r}")
    if not account.webhook_url or account.webhook_url_disabled_at is not None:
        return None
    delivery = WebhookDelivery(
        account_id=account.id,
        event_type=event_type,
        url=account.webhook_url,
        to_account_endpoint=True,
        payload=event_payload(event_type, {"account_id": account.id, **data}, now),
        next_attempt_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery.id


def event_payload(event_type: str, data: dict[str, Any], when: datetime) -> dict[str, Any]:
    return {"type": event_type, "timestamp": as_utc(when).isoformat(), "data": data}


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent and signed (compact JSON, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def job_payload(event_type: str, job: Job, now: datetime) -> dict[str, Any]:
    """The job as the API shows it, with large parts replaced by a link to the job,
    so a payload stays under MAX_PAYLOAD_BYTES whatever the job produced."""
    payload = event_payload(event_type, job_view(job), job.finished_at or now)
    for part in ("result", "input"):
        if len(encode(payload)) < MAX_PAYLOAD_BYTES:
            break
        payload["data"][part] = {"truncated": True, "url": f"/v1/jobs/{job.id}"}
    return payload


# --- sending ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One claimed attempt: what the sender needs, read in one short transaction."""

    delivery_id: str
    url: str
    body: bytes
    secrets: list[str]
    account_id: str
    # The lease end the claim wrote: it names this claim, and `record_attempt` needs it.
    claim: datetime
    job_id: str | None = None


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    latency_ms: int
    error: str | None = None
    retry_after: float | None = None
    # True when our own policy refused the URL: retrying would refuse it again.
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def attempt_lease(deadline: float) -> timedelta:
    """How long a claim holds for an attempt whose send is cut at `deadline` seconds:
    twice that plus a minute (the DNS lookup, which the deadline cannot cut short, and
    the two transactions around the send), so only a crashed worker's claim runs out."""
    return timedelta(seconds=2 * deadline + 60)


def claim_attempt(
    session: Session,
    delivery_id: str,
    now: datetime,
    lease: timedelta,
    grace: timedelta,
    schedule: tuple[float, ...],
) -> Outgoing | None:
    """Take the next attempt of a due delivery, or None (not due, final, or another
    worker holds it). The lease lets a crashed worker's attempt be taken again later.

    A lease that ran out with nothing recorded is an attempt that died (its worker was
    killed, or the send crashed): it is logged and counted like any failed attempt, and
    the last one (`schedule`, as in `record_attempt`) fails the delivery. Without that,
    an event whose send kills the worker would be resent by the requeue for ever.

    Each claim's lease end is later than the one it replaced (it is only taken once that
    one is past), so `Outgoing.claim` tells this claim from every other."""
    lease_end = now + lease
    due = _due(delivery_id, now)
    lapsed = session.execute(
        update(WebhookDelivery)
        .where(due, WebhookDelivery.claimed_until < now)
        .values(claimed_until=lease_end, attempts=WebhookDelivery.attempts + 1)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not lapsed:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(due, WebhookDelivery.claimed_until.is_(None))
            .values(claimed_until=lease_end)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not claimed:
            return None
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    assert delivery is not None
    if lapsed:
        session.add(WebhookAttempt(delivery_id=delivery_id, attempted_at=now, error=LAPSED))
        if delivery.attempts >= (delivery.max_attempts or len(schedule) + 1):
            _finish(delivery, "failed", now)
            session.flush()
            return None
    account = session.get(Account, delivery.account_id)
    assert account is not None
    if _endpoint_disabled(account, delivery):
        _finish(delivery, "disabled", now)
        return None
    get_or_create_secret(session, account)
    return Outgoing(
        delivery_id=delivery.id,
        url=delivery.url,
        body=encode(delivery.payload),
        secrets=signing_secrets(account, now, grace),
        account_id=account.id,
        claim=lease_end,
        job_id=delivery.job_id,
    )


def _due(delivery_id: str, now: datetime) -> ColumnElement[bool]:
    return and_(
        WebhookDelivery.id == delivery_id,
        WebhookDelivery.status == "pending",
        WebhookDelivery.next_attempt_at <= now + DUE_SLACK,
    )


def _unheld(now: datetime) -> ColumnElement[bool]:
    return or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now)


class Destination(NamedTuple):
    url: str
    account_id: str


def claimable_destination(session: Session, delivery_id: str, now: datetime) -> Destination | None:
    """Where a delivery that `claim_attempt` could take now (due, pending, held by no live
    claim) goes, and whose it is; else None. Read without claiming, so the sender can
    first take one of the account's slots at the URL's endpoint and claim only once it
    has one."""
    row = session.execute(
        select(WebhookDelivery.url, WebhookDelivery.account_id).where(
            _due(delivery_id, now), _unheld(now)
        )
    ).one_or_none()
    return None if row is None else Destination(row.url, row.account_id)


def defer_attempt(session: Session, delivery_id: str, now: datetime, delay: float) -> bool:
    """Push a claimable delivery's next attempt `delay` seconds on, without using an
    attempt or touching its claim: its endpoint had no free slot and it waits, parked,
    for one (`wake`); the requeue leaves it alone meanwhile. False if it is no longer
    claimable."""
    return bool(
        session.execute(
            update(WebhookDelivery)
            .where(_due(delivery_id, now), _unheld(now))
            .values(next_attempt_at=now + timedelta(seconds=delay))
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    )


def wake(session: Session, delivery_id: str, now: datetime) -> bool:
    """A parked delivery is due now (a slot at its endpoint is free). False if it is no
    longer waiting (sent, ended, or claimed by a duplicate message meanwhile)."""
    return bool(
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at > now,
                _unheld(now),
            )
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    )


def _endpoint_disabled(account: Account, delivery: WebhookDelivery) -> bool:
    return (
        delivery.to_account_endpoint
        and account.webhook_url_disabled_at is not None
        and account.webhook_url == delivery.url
    )


@dataclass(frozen=True)
class Recorded:
    """What an attempt's record decided. `outcome` (the metric's label): delivered,
    retrying, given_up (failed or disabled), or stale (the attempt had lost its claim
    and was only logged); `retry_in`: seconds until the retry."""

    outcome: str
    retry_in: float | None = None


def record_attempt(
    session: Session,
    delivery_id: str,
    claim: datetime,
    result: AttemptResult,
    now: datetime,
    schedule: tuple[float, ...],
    rng: random.Random | None = None,
) -> Recorded:
    """Write the attempt and decide what follows.

    Only the claim's holder decides: the delivery must still be pending with `claim`
    (`Outgoing.claim`) as its lease. An attempt that outlived its lease may have been
    claimed again, and its late 500 must not end or reschedule the attempt running
    now; it is only logged. A 2xx is recorded whoever sent it, over a pending or even
    a failed delivery (the receiver has the event), never over a disabled one.

    2xx succeeds; 410 Gone disables the URL (the account's default endpoint is
    switched off, a job's own URL gets nothing more); a URL our policy refuses fails
    at once; anything else is retried on `schedule` until its attempts run out.
    """
    held: ColumnElement[bool]
    if result.ok:
        held = WebhookDelivery.status.in_(("pending", "failed"))
    else:
        held = and_(WebhookDelivery.status == "pending", WebhookDelivery.claimed_until == claim)
    taken = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, held)
        .values(
            attempts=WebhookDelivery.attempts + 1,
            last_status_code=result.status_code,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None:
        raise NotFound(f"Webhook delivery {delivery_id!r} not found.")
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            attempted_at=now,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=(result.error or "")[:2000] or None,
        )
    )
    if not taken:
        session.flush()
        return Recorded("stale")
    max_attempts = delivery.max_attempts or len(schedule) + 1
    if result.ok:
        _finish(delivery, "succeeded", now)
        outcome = "delivered"
    elif result.status_code == 410:
        _finish(delivery, "disabled", now)
        if delivery.to_account_endpoint:
            session.execute(
                update(Account)
                .where(Account.id == delivery.account_id, Account.webhook_url == delivery.url)
                .values(webhook_url_disabled_at=now)
                .execution_options(synchronize_session=False)
            )
        outcome = "given_up"
    elif result.refused or delivery.attempts >= max_attempts or not schedule:
        _finish(delivery, "failed", now)
        outcome = "given_up"
    else:
        delay = retry_delay(schedule, delivery.attempts, result.retry_after, rng or _JITTER)
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        session.flush()
        return Recorded("retrying", delay)
    session.flush()
    return Recorded(outcome)


def retry_delay(
    schedule: tuple[float, ...],
    attempts_made: int,
    retry_after: float | None,
    rng: random.Random,
) -> float:
    """The schedule's step for this retry, jittered by +-20%, and never sooner than the
    receiver's Retry-After.

    Jitter spreads the retries of many deliveries that failed together (a receiver
    outage); a bounded band rather than "full jitter" (0..step) keeps each delay
    longer than the one before, so a struggling receiver does get more room.
    """
    step = schedule[min(attempts_made - 1, len(schedule) - 1)]
    delay = float(step * rng.uniform(0.8, 1.2))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def _finish(delivery: WebhookDelivery, status: str, now: datetime) -> None:
    delivery.status = status
    delivery.next_attempt_at = None
    delivery.claimed_until = None
    delivery.finished_at = now


def overdue_delivery_ids(
    session: Session, now: datetime, grace: timedelta, limit: int = 500
) -> list[str]:
    """Pending deliveries whose attempt is past due by `grace` and held by nobody: their
    message was lost (broker down at commit, worker gone) or their wait was too long
    for a broker countdown. The sweep sends them again; the claim keeps it single.

    Those whose last claim ran out unrecorded (a worker killed mid-send, perhaps by the
    event itself) come after the rest, so a batch of them cannot take the whole `limit`
    tick after tick while every other tenant's retries wait."""
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now - grace,
                _unheld(now),
            )
            .order_by(WebhookDelivery.claimed_until.is_not(None), WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )


# --- the API's views ----------------------------------------------------------------


def redeliver(session: Session, account_id: str, delivery_id: str, now: datetime) -> str:
    """Send a delivery again now: one more attempt for a finished one (no new retry
    series), or the next attempt brought forward for a pending one."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.account_id != account_id:
        raise NotFound(f"Webhook delivery {delivery_id!r} not found.")
    if delivery.status == "disabled":
        raise WebhookDisabled(
            "This URL answered 410 Gone and was disabled; set a new URL to receive events.",
            delivery_id=delivery_id,
        )
    if delivery.status != "pending":
        delivery.status = "pending"
        delivery.max_attempts = delivery.attempts + 1
        delivery.finished_at = None
    delivery.next_attempt_at = now
    session.flush()
    return delivery.id


def job_deliveries(
    session: Session, account_id: str, job_id: str
) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """A job's deliveries with their attempts, oldest first (another account's: 404)."""
    get_job(session, account_id, job_id)
    deliveries = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(attempts))
            .order_by(WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [(d, attempts[d.id]) for d in deliveries]


def delivery_view(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return as_utc(value).isoformat() if value else None

    return {
        "id": delivery.id,
        "event_type": delivery.event_type,
        "job_id": delivery.job_id,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "created_at": iso(delivery.created_at),
        "finished_at": iso(delivery.finished_at),
        "attempt_log": [
            {
                "attempted_at": iso(a.attempted_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in attempts
        ],
    }
