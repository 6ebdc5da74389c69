"""Purchases: money owed for credits or a plan, pending until a payment confirms it.

Credits are granted only by confirming a purchase (admin, or a verified Stripe event),
and the `pending -> paid` move is the gate that makes the grant happen once.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.account import PAYMENT_METHODS
from models.base import BIG_INT, Base, CreatedAt, new_id, one_of
from models.plan import Plan

PURCHASE_KINDS = ("credits", "subscription")
PURCHASE_STATUSES = ("pending", "paid", "failed")


class Purchase(CreatedAt, Base):
    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint(one_of("kind", PURCHASE_KINDS), name="kind"),
        CheckConstraint(one_of("status", PURCHASE_STATUSES), name="status"),
        CheckConstraint(one_of("method", PAYMENT_METHODS), name="method"),
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint("period_months >= 1", name="months_positive"),
        Index("ix_purchases_account_created", "account_id", "created_at"),
        Index("ix_purchases_status_created", "status", "created_at"),
        # One payment pays for one purchase (billing.credits.paying_once).
        Index(
            "uq_purchases_paid_reference",
            "payment_reference",
            unique=True,
            sqlite_where=text("status = 'paid'"),
            postgresql_where=text("status = 'paid'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pur"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    credits: Mapped[int] = mapped_column(BIG_INT)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    # A subscription payment: the plan it pays for, and how many months.
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    period_months: Mapped[int] = mapped_column(default=1)
    method: Mapped[str | None] = mapped_column(String(30))
    payment_reference: Mapped[str | None] = mapped_column(String(255))
    stripe_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_url: Mapped[str | None] = mapped_column(String(2000))
    # The grant that paid out this purchase (exactly one once paid; the audit checks it).
    transaction_id: Mapped[int | None] = mapped_column(
        ForeignKey("credit_transactions.id"), unique=True
    )
    failure_reason: Mapped[str | None] = mapped_column(String(200))
    confirmed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]

    plan: Mapped[Plan | None] = relationship()
