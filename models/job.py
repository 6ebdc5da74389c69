"""Jobs: one AI operation an account asked for, from queued to a final state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, new_id, one_of

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")


class Job(CreatedAt, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key"),
        CheckConstraint(one_of("status", JOB_STATUSES), name="status"),
        Index("ix_jobs_account_created", "account_id", "created_at", "id"),
        # Platform totals per day scan jobs by time only; BRIN stays tiny on an append-only
        # table and costs the insert almost nothing (a btree on SQLite).
        Index("ix_jobs_created_at", "created_at", postgresql_using="brin"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"))
    operation: Mapped[str] = mapped_column(String(40))
    input: Mapped[dict[str, Any]]
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    reserved_credits: Mapped[int] = mapped_column(default=0)
    credits_charged: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The automation run that made this job (runs are not built yet, hence no foreign key):
    # usage counts a job's spending as `automation` when it is set, else `manual`.
    automation_id: Mapped[str | None] = mapped_column(String(40), index=True)
