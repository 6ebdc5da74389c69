"""The credit ledger: holds (two-phase), posted transactions and usage logs."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import BIG_INT, Base, CreatedAt, one_of

HOLD_STATUSES = ("held", "settled", "released", "expired")
TRANSACTION_TYPES = (
    "registration",
    "renewal",
    "topup",
    "bank_transfer",
    "subscription",
    "adjustment",
    "deduction",
)


class CreditReservation(CreatedAt, Base):
    __tablename__ = "credit_reservations"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(one_of("status", HOLD_STATUSES), name="status"),
        Index("ix_credit_reservations_open", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    # One hold per job: a redelivered task finds the same hold, never a second one.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # The automation run whose hold this one was carved from (None: reserved directly).
    automation_id: Mapped[str | None] = mapped_column(ForeignKey("automation_runs.id"), index=True)
    amount: Mapped[int] = mapped_column(BIG_INT)
    status: Mapped[str] = mapped_column(String(20), default="held")
    expires_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


class CreditTransaction(CreatedAt, Base):
    __tablename__ = "credit_transactions"
    __table_args__ = (
        CheckConstraint(one_of("type", TRANSACTION_TYPES), name="type"),
        # Exactly one deduction per job, whatever the delivery count.
        Index(
            "uq_credit_transactions_deduction_job",
            "job_id",
            unique=True,
            sqlite_where=text("type = 'deduction'"),
            postgresql_where=text("type = 'deduction'"),
        ),
        # A payment or period grant is posted once (bank reference, renewal period ...).
        Index(
            "uq_credit_transactions_reference",
            "account_id",
            "type",
            "reference",
            unique=True,
            sqlite_where=text("reference IS NOT NULL"),
            postgresql_where=text("reference IS NOT NULL"),
        ),
        Index("ix_credit_transactions_account_id_desc", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    type: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BIG_INT)
    balance_after: Mapped[int] = mapped_column(BIG_INT)
    description: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    reference: Mapped[str | None] = mapped_column(String(200))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)


# What usage insights group and sum, beside (account_id, created_at).
USAGE_INSIGHT_COLUMNS = (
    "operation", "site_id", "model", "automation_id", "credits", "items_created", "images",
    "cost_usd", "tokens_in", "tokens_out",
)  # fmt: skip


class CreditUsageLog(CreatedAt, Base):
    __tablename__ = "credit_usage_logs"
    __table_args__ = (
        # One account's insights and logs (newest first, keyset by (created_at, id)) read
        # only that account's rows; on PostgreSQL the index also carries what insights sum,
        # so they are an index-only scan of the account's own entries.
        Index(
            "ix_credit_usage_logs_account_created_id",
            "account_id",
            "created_at",
            "id",
            postgresql_include=list(USAGE_INSIGHT_COLUMNS),
        ),
        # Platform totals per day, across accounts (BRIN on PostgreSQL: see ix_jobs_created_at).
        Index("ix_credit_usage_logs_created_at", "created_at", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"))
    operation: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(100))
    tokens_in: Mapped[int] = mapped_column(BIG_INT, default=0)
    tokens_out: Mapped[int] = mapped_column(BIG_INT, default=0)
    images: Mapped[int] = mapped_column(BIG_INT, default=0)
    credits: Mapped[int] = mapped_column(BIG_INT)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    items_created: Mapped[int] = mapped_column(default=0)
    # The job's automation run, copied by settle: usage counts the row as `automation`.
    automation_id: Mapped[str | None] = mapped_column(String(40))
    # How the job ended: usage is billed whatever the outcome (README "What is charged").
    outcome: Mapped[str | None] = mapped_column(String(20))


UNBILLED_REASONS = ("duplicate_run", "expired_uncovered", "internal_error")


class UnbilledUsage(CreatedAt, Base):
    """Provider usage nobody was charged for: counted, visible to admins, never dropped.

    A second run of a job that had already ended, a late answer for an expired job the
    account could no longer cover, or our own failure after the provider answered.
    """

    __tablename__ = "unbilled_usage"
    __table_args__ = (
        CheckConstraint(one_of("reason", UNBILLED_REASONS), name="reason"),
        Index("ix_unbilled_usage_created", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    operation: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(100))
    tokens_in: Mapped[int] = mapped_column(BIG_INT, default=0)
    tokens_out: Mapped[int] = mapped_column(BIG_INT, default=0)
    images: Mapped[int] = mapped_column(BIG_INT, default=0)
    # What it would have cost the account, and what it cost us.
    credits: Mapped[int] = mapped_column(BIG_INT)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    reason: Mapped[str] = mapped_column(String(30))
