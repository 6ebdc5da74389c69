"""The reconciler: the database is the record of every job, so work whose message or
worker was lost is found there and sent again (beat, every RECONCILE_INTERVAL_SECONDS).

- A running job whose worker stopped heart-beating is sent again (its new run takes it
  over, see `runs.start_job`); one whose cancel was requested is ended `cancelled`, and
  one that lost `max_attempts` runs is failed, both uncharged.
- A dispatched job not started for `dispatch_stale` may have lost its message (Redis
  restarted empty, a crash between commit and send): it is sent again when no message in
  the broker carries its id. A broker whose queues cannot be listed gives counts only:
  when a queue holds fewer messages than its dispatched jobs, the oldest are sent again
  (there, messages of cancelled jobs waiting to be skipped can hide a lost one).
- Accounts with free slots and waiting jobs (a plan's cap raised) are admitted.

Duplicates are harmless: a message for a job that is final, waiting or running with a
fresh heartbeat is skipped, and the settle gate keeps a charge single. Each job is sent
again at most once per threshold (`sent_at`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billing import automation, runs
from billing.admission import Dispatch, admit, waiting_account_ids
from billing.operations import OPERATIONS
from models import Job, as_utc

SCAN_LIMIT = 2000


@dataclass(frozen=True)
class Policy:
    heartbeat_stale: timedelta
    dispatch_stale: timedelta
    max_attempts: int


@dataclass(frozen=True)
class InBroker:
    """What waits in the job queues right now: the jobs whose ids the messages carry, or,
    from a broker that cannot list its messages, only how many wait per queue. Nothing
    known (the broker unreachable): every stale dispatched job is sent again."""

    job_ids: frozenset[str] | None = None
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Reconciled:
    resent: list[Dispatch] = field(default_factory=list)
    endings: list[runs.Ending] = field(default_factory=list)
    admitted: list[Dispatch] = field(default_factory=list)

    @property
    def dispatches(self) -> list[Dispatch]:
        """Everything to send after commit."""
        ended = [d for ending in self.endings for d in ending.dispatches]
        return self.resent + ended + self.admitted

    @property
    def deliveries(self) -> list[str]:
        return [d for ending in self.endings for d in ending.deliveries]

    def summary(self) -> str:
        ended = sum(len(ending.job_ids) for ending in self.endings)
        return (
            f"{len(self.resent)} job(s) sent again, {ended} dead job(s) ended, "
            f"{len(self.admitted)} waiting job(s) admitted"
        )


def reconcile(session: Session, now: datetime, policy: Policy, in_broker: InBroker) -> Reconciled:
    """One pass; `in_broker`: read before it, so a job whose message was taken meanwhile
    is running (not looked at) or, at worst, sent again (a harmless duplicate)."""
    done = Reconciled()
    _dead_runs(session, now, policy, done)
    # Automation runs whose cancel raced an ending (a child made meanwhile) end here.
    cancels = automation.sweep_cancelled_runs(session)
    if cancels.job_ids or cancels.deliveries:
        done.endings.append(cancels)
    _lost_messages(session, now, policy, in_broker, done)
    for account_id in waiting_account_ids(session):
        done.admitted += admit(session, account_id, now)
    return done


def _dead_runs(session: Session, now: datetime, policy: Policy, done: Reconciled) -> None:
    rows = session.execute(
        select(Job.id, Job.operation, Job.attempts, Job.cancel_requested_at)
        .where(runs.stale_running(now, policy.heartbeat_stale))
        .order_by(Job.heartbeat_at)
        .limit(SCAN_LIMIT)
        .with_for_update(skip_locked=True, key_share=True)
    ).all()
    resend = []
    for row in rows:
        cancelled = row.cancel_requested_at is not None
        if cancelled or row.attempts >= policy.max_attempts:
            done.endings.append(
                runs.end_dead_job(session, row.id, cancelled=cancelled, attempts=row.attempts)
            )
        else:
            resend.append(Dispatch(row.id, row.operation))
    _mark_sent(session, resend, now)
    done.resent += resend


def _lost_messages(
    session: Session,
    now: datetime,
    policy: Policy,
    in_broker: InBroker,
    done: Reconciled,
) -> None:
    rows = session.execute(
        select(Job.id, Job.operation, Job.sent_at)
        .where(Job.status == "queued", Job.dispatched_at.is_not(None))
        .order_by(Job.sent_at)
        .limit(SCAN_LIMIT)
        .with_for_update(skip_locked=True, key_share=True)
    ).all()
    if in_broker.job_ids is not None:
        resend = [
            Dispatch(row.id, row.operation)
            for row in rows
            if row.id not in in_broker.job_ids and _stale(row.sent_at, now, policy)
        ]
    else:
        resend = _missing_by_count(
            rows, _dispatched_per_queue(session), now, policy, in_broker.counts
        )
    _mark_sent(session, resend, now)
    done.resent += resend


def _stale(sent_at: datetime | None, now: datetime, policy: Policy) -> bool:
    return sent_at is None or as_utc(sent_at) < now - policy.dispatch_stale


def _dispatched_per_queue(session: Session) -> dict[str, int]:
    """Every dispatched job still queued, per queue: the scan reads only the oldest
    SCAN_LIMIT, and comparing those alone with the queue's length would hide lost
    messages whenever more jobs than that wait."""
    totals: dict[str, int] = {}
    for operation, count in session.execute(
        select(Job.operation, func.count())
        .where(Job.status == "queued", Job.dispatched_at.is_not(None))
        .group_by(Job.operation)
    ):
        queue = OPERATIONS[operation].queue
        totals[queue] = totals.get(queue, 0) + int(count)
    return totals


def _missing_by_count(
    rows: Sequence[Any],
    dispatched: Mapping[str, int],
    now: datetime,
    policy: Policy,
    counts: Mapping[str, int],
) -> list[Dispatch]:
    """`rows`: the oldest dispatched jobs; `dispatched`: how many there are in all."""
    by_queue: dict[str, list[Any]] = {}
    for row in rows:
        by_queue.setdefault(OPERATIONS[row.operation].queue, []).append(row)
    resend = []
    for queue, jobs in by_queue.items():
        # FIFO: the messages still waiting belong to the newest jobs; the oldest dispatched
        # jobs beyond that count lost theirs.
        missing = dispatched.get(queue, len(jobs)) - counts.get(queue, 0)
        stale = [
            Dispatch(row.id, row.operation) for row in jobs if _stale(row.sent_at, now, policy)
        ]
        resend += stale[: max(missing, 0)]
    return resend


def _mark_sent(session: Session, dispatches: list[Dispatch], now: datetime) -> None:
    if dispatches:
        session.execute(
            update(Job)
            .where(Job.id.in_([d.job_id for d in dispatches]))
            .values(sent_at=now)
            .execution_options(synchronize_session=False)
        )
