"""Plans: what an account pays for, its four limits and its model policy."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import CheckConstraint, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt


class Plan(CreatedAt, Base):
    __tablename__ = "plans"
    __table_args__ = (CheckConstraint("max_concurrent_jobs >= 1", name="max_concurrent_jobs"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(50), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0"))
    billing_cycle: Mapped[str] = mapped_column(String(20), default="monthly")
    included_credits: Mapped[int] = mapped_column(default=0)
    # None means unlimited for the four limits. No column defaults: SQLAlchemy would
    # write a default in place of an explicit None (the seeding bug of issue 10), so
    # every plan states its limits (billing/catalog.py, billing/plans.PlanFields).
    max_sites: Mapped[int | None]
    max_users: Mapped[int | None]
    max_keywords: Mapped[int | None]
    max_ahrefs_queries: Mapped[int] = mapped_column(default=0)
    allow_credit_topup: Mapped[bool] = mapped_column(default=False)
    # USD per credit bought on top of the plan (a top-up purchase's price); None: no price.
    extra_credit_price: Mapped[Decimal | None] = mapped_column(Numeric(10, 6))
    is_internal: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    features: Mapped[list[str]] = mapped_column(default=list)
    force_default_models: Mapped[bool] = mapped_column(default=False)
    # Empty list: every active model of that type is allowed.
    allowed_text_models: Mapped[list[str]] = mapped_column(default=list)
    allowed_image_models: Mapped[list[str]] = mapped_column(default=list)
    requests_per_minute: Mapped[int] = mapped_column(default=120)
    # Jobs of one account dispatched or running at once; the rest wait, queued.
    max_concurrent_jobs: Mapped[int] = mapped_column(default=2, server_default="2")
    # Fields an admin set (PATCH /v1/admin/plans): `ops seed` leaves them as they are.
    admin_fields: Mapped[list[str]] = mapped_column(default=list, server_default="[]")
