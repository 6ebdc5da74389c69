"""Webhooks: one delivery per event (its id is the Standard Webhooks `webhook-id`) and
one attempt row per HTTP try, so a customer can see exactly what we sent and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, new_id, one_of, utcnow

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "disabled")


class WebhookDelivery(CreatedAt, Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(one_of("status", DELIVERY_STATUSES), name="status"),
        # A job ends once, so it has one event of each type (NULLs never collide).
        UniqueConstraint("job_id", "event_type"),
        # A run ends once too: one `automation.*` event per run.
        Index("uq_webhook_deliveries_automation_event", "automation_id", "event_type", unique=True),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_account_created", "account_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    automation_id: Mapped[str | None] = mapped_column(ForeignKey("automation_runs.id"))
    event_type: Mapped[str] = mapped_column(String(50))
    url: Mapped[str] = mapped_column(String(2000))
    # True when `url` is the account's default endpoint (a 410 then disables that).
    to_account_endpoint: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # None: as many as the retry schedule allows; a manual redelivery sets one more.
    max_attempts: Mapped[int | None]
    # When the next attempt is due (None once final) and, while one runs, its lease.
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    finished_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    latency_ms: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
