"""What operators watch that only the database knows: credits on hold, open holds and
the oldest of them, jobs waiting and running. Read at scrape time (api/metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Account, CreditReservation, Job, as_utc


@dataclass(frozen=True)
class PlatformState:
    credits_held: int
    holds_open: int
    oldest_hold_age_seconds: float
    jobs_by_status: dict[str, int]


def platform_state(session: Session, now: datetime) -> PlatformState:
    held = session.scalar(select(func.coalesce(func.sum(Account.reserved_credits), 0)))
    count, oldest = session.execute(
        select(func.count(), func.min(CreditReservation.created_at)).where(
            CreditReservation.status == "held"
        )
    ).one()
    jobs: dict[str, int] = {
        status: count
        for status, count in session.execute(
            select(Job.status, func.count())
            .where(Job.status.in_(("queued", "running")))
            .group_by(Job.status)
        )
    }
    return PlatformState(
        credits_held=int(held or 0),
        holds_open=int(count),
        oldest_hold_age_seconds=(now - as_utc(oldest)).total_seconds() if oldest else 0.0,
        jobs_by_status={status: jobs.get(status, 0) for status in ("queued", "running")},
    )
