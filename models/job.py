"""Jobs: one AI operation an account asked for, from queued to a final state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import BIG_INT, Base, CreatedAt, new_id, one_of

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
# A job holds one of its account's concurrency slots from dispatch until it ends.
_HOLDS_SLOT = "status IN ('queued', 'running') AND dispatched_at IS NOT NULL"
_WAITING = "status = 'queued' AND dispatched_at IS NULL"


class Job(CreatedAt, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key"),
        CheckConstraint(one_of("status", JOB_STATUSES), name="status"),
        Index("ix_jobs_account_created", "account_id", "created_at", "id"),
        # Platform totals per day scan jobs by time only; BRIN stays tiny on an append-only
        # table and costs the insert almost nothing (a btree on SQLite).
        Index("ix_jobs_created_at", "created_at", postgresql_using="brin"),
        # Partial indexes: admission counts an account's slots and takes its oldest waiting
        # job; the reconciler scans the slot holders. Both stay small (final jobs leave).
        Index(
            "ix_jobs_slots",
            "account_id",
            sqlite_where=text(_HOLDS_SLOT),
            postgresql_where=text(_HOLDS_SLOT),
        ),
        # A run's child is made once: one job per (parent job, index of its input item).
        Index("uq_jobs_parent_child", "parent_job_id", "child_index", unique=True),
        Index(
            "ix_jobs_waiting",
            "account_id",
            "created_at",
            "id",
            sqlite_where=text(_WAITING),
            postgresql_where=text(_WAITING),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"))
    operation: Mapped[str] = mapped_column(String(40))
    input: Mapped[dict[str, Any]]
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    reserved_credits: Mapped[int] = mapped_column(BIG_INT, default=0)
    credits_charged: Mapped[int] = mapped_column(BIG_INT, default=0)
    result: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The automation run that made this job (a plain column: usage analytics and its bench
    # tag jobs without a run row): usage counts its spending as `automation` when set.
    automation_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # A run's child: the job whose output it continues, which of that job's items (in id
    # order) it was made from, and that item's id (cluster, idea, content or prompt).
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    child_index: Mapped[int | None]
    source_item_id: Mapped[int | None]
    # In flight (billing/admission.py, billing/runs.py): when the job took a concurrency
    # slot (set once), when its message was last sent to the broker, the last heartbeat of
    # the worker running it, and when the account asked to cancel it while it ran.
    dispatched_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
