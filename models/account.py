"""The account aggregate: the tenant, its users and invitations, API keys, sites, AI settings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import BIG_INT, Base, CreatedAt, new_id, one_of
from models.plan import Plan

USER_ROLES = ("owner", "admin", "editor", "viewer")
ACCOUNT_STATUSES = ("trial", "active", "suspended", "pending_payment", "cancelled")
# How the account pays (tenancy plan, phase 1): set by the payment that last confirmed.
PAYMENT_METHODS = ("stripe", "bank_transfer", "manual")
# Users who hold their address: registration and accepting an invitation set joined_at.
JOINED = text("joined_at IS NOT NULL")


class Account(CreatedAt, Base):
    __tablename__ = "accounts"
    __table_args__ = (
        # The ledger's invariants, guarded by the database as well as by the code.
        CheckConstraint("reserved_credits >= 0", name="reserved_not_negative"),
        CheckConstraint("credits >= reserved_credits", name="reserved_within_balance"),
        CheckConstraint(one_of("status", ACCOUNT_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("acc"))
    name: Mapped[str] = mapped_column(String(200), default="")
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(20), default="trial")
    credits: Mapped[int] = mapped_column(BIG_INT, default=0)
    reserved_credits: Mapped[int] = mapped_column(BIG_INT, default=0)
    trial_ends_at: Mapped[datetime | None]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    # End of the time a bank transfer prepaid (its credits were granted with it): periods
    # starting before it are not renewed, and the rollover that reaches it asks for payment.
    paid_until: Mapped[datetime | None]
    usage_ahrefs_queries: Mapped[int] = mapped_column(default=0)
    payment_method: Mapped[str | None] = mapped_column(String(30))
    # A downgrade the owner asked for: the period rollover switches to it (billing/lifecycle).
    scheduled_plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    # Spending budgets (credits per usage period): the whole account, and per operation.
    budget_monthly_credits: Mapped[int | None] = mapped_column(BIG_INT)
    budget_per_operation: Mapped[dict[str, Any] | None]
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    # Set when the default endpoint answered 410 Gone; setting a URL again clears it.
    webhook_url_disabled_at: Mapped[datetime | None]
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    # After a rotation both secrets sign, until the grace period ends.
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(100))
    webhook_secret_rotated_at: Mapped[datetime | None]
    # IANA name ("Europe/Paris") the usage timeline is bucketed in; None means UTC.
    timezone: Mapped[str | None] = mapped_column(String(64))

    plan: Mapped[Plan | None] = relationship(lazy="joined", foreign_keys=[plan_id])
    scheduled_plan: Mapped[Plan | None] = relationship(foreign_keys=[scheduled_plan_id])

    @property
    def available_credits(self) -> int:
        return max(self.credits - self.reserved_credits, 0)


class User(CreatedAt, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(one_of("role", USER_ROLES), name="role"),
        # One login per mailbox: only a user who joined (registered, or accepted an
        # invitation) holds the address. Invitations reserve nothing: several accounts may
        # invite one address, each once (billing/accounts.py, billing/team.py).
        Index("uq_users_email_joined", "email", unique=True, sqlite_where=JOINED,
              postgresql_where=JOINED),
        Index("uq_users_email_normalized_joined", "email_normalized", unique=True,
              sqlite_where=JOINED, postgresql_where=JOINED),
        Index("uq_users_account_email", "account_id", "email", unique=True),
        Index("uq_users_account_email_normalized", "account_id", "email_normalized",
              unique=True),
    )  # fmt: skip

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("usr"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    # One login per mailbox: case, and for providers that ignore them dots and +tags,
    # removed (billing/emails.py). NULL only for rows older than the column that collided.
    email_normalized: Mapped[str | None] = mapped_column(String(320), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20), default="owner")
    # Login tokens carry it: a role change or a new password bumps it, so the tokens
    # issued before stop working at once.
    token_version: Mapped[int] = mapped_column(default=0)
    # When the member set a password (the owner: at registration); None while invited.
    joined_at: Mapped[datetime | None]


class Invitation(CreatedAt, Base):
    """A one-time, expiring token an invited member exchanges for a password.

    Only the SHA-256 of the token is stored; the token is shown once."""

    __tablename__ = "invitations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("inv"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    # A newer invitation for the same member replaces this one.
    revoked_at: Mapped[datetime | None]


class ApiKey(CreatedAt, Base):
    """Only the SHA-256 of a key is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100), default="default")
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Site(CreatedAt, Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("site"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str | None] = mapped_column(String(300))
    # Deleted sites stay for the history of their jobs, usage and artifacts.
    deleted_at: Mapped[datetime | None]


class AISettings(Base):
    """Per-account model preference per operation, honoured only where the plan allows."""

    __tablename__ = "ai_settings"
    __table_args__ = (UniqueConstraint("account_id", "operation"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    operation: Mapped[str] = mapped_column(String(40))
    model_name: Mapped[str] = mapped_column(ForeignKey("ai_model_configs.name"))


class Keyword(CreatedAt, Base):
    __tablename__ = "keywords"
    __table_args__ = (UniqueConstraint("site_id", "keyword"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    keyword: Mapped[str] = mapped_column(String(300))
    volume: Mapped[int | None]
    difficulty: Mapped[int | None]
    cpc: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    country: Mapped[str | None] = mapped_column(String(2))
    intent: Mapped[str | None] = mapped_column(String(20))
