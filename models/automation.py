"""Automation runs: one request that runs the content pipeline (keywords -> clusters ->
ideas -> articles -> image prompts -> images) as ordinary jobs under one credit hold."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import BIG_INT, Base, CreatedAt, new_id, one_of

RUN_STATUSES = ("queued", "running", "succeeded", "partially_succeeded", "failed", "cancelled")
FINAL_RUN_STATUSES = ("succeeded", "partially_succeeded", "failed", "cancelled")


class AutomationRun(CreatedAt, Base):
    """The run's hold is `reserved_credits`, taken from the account once at submission.
    `held_credits` is the part not yet carved into its jobs' holds (it counts in the
    account's `reserved_credits` like any open hold); `released_credits` is what was left
    of it when the run ended. billing/audit.py proves reserved == held + released + the
    holds carved from it."""

    __tablename__ = "automation_runs"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key"),
        CheckConstraint(one_of("status", RUN_STATUSES), name="status"),
        CheckConstraint("held_credits >= 0", name="held_not_negative"),
        CheckConstraint("released_credits >= 0", name="released_not_negative"),
        CheckConstraint("held_credits + released_credits <= reserved_credits", name="within_hold"),
        Index("ix_automation_runs_account_created", "account_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("auto"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    keywords: Mapped[list[str]]
    # The operations run, in pipeline order (a prefix of billing.pipeline.STAGES).
    stages: Mapped[list[str]]
    # Normalised options, and per stage the model, the most jobs and the hold of each,
    # as priced at submission (children are cut to fit those holds).
    options: Mapped[dict[str, Any]]
    plan: Mapped[dict[str, Any]]
    reserved_credits: Mapped[int] = mapped_column(BIG_INT)
    held_credits: Mapped[int] = mapped_column(BIG_INT, default=0)
    released_credits: Mapped[int] = mapped_column(BIG_INT, default=0)
    # Children that could not be made (an unusable input, or one beyond the priced hold).
    skipped_children: Mapped[int] = mapped_column(default=0)
    hold_ttl_seconds: Mapped[int]
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    cancel_requested_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
