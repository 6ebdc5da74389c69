"""Account lifecycle records: the event log of status changes and the once-only claims
that make each periodic effect happen once per (task, account, period)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt


class AccountEvent(CreatedAt, Base):
    """Something that happened to an account without moving credits (trial expiry ...).

    Credit movements have the ledger; this is the audit trail for everything else.
    """

    __tablename__ = "account_events"
    __table_args__ = (Index("ix_account_events_account_created", "account_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    type: Mapped[str] = mapped_column(String(50))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PeriodRun(CreatedAt, Base):
    """A periodic task's claim on one account and period; the unique key is the gate.

    Inserting the row *is* the claim: a second run of the same period, from the same
    beat or another one, hits the unique constraint and does nothing.
    """

    __tablename__ = "period_runs"
    __table_args__ = (UniqueConstraint("task", "account_id", "period_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    period_key: Mapped[str] = mapped_column(String(64))
