"""AIModelConfig: the one price list every estimate and charge reads."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import CheckConstraint, Index, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt


class AIModelConfig(CreatedAt, Base):
    __tablename__ = "ai_model_configs"
    __table_args__ = (
        CheckConstraint("model_type IN ('text', 'image')", name="model_type"),
        CheckConstraint("tokens_per_credit > 0", name="tokens_per_credit_positive"),
        # At most one default per type, enforced by the database itself.
        Index(
            "uq_ai_model_configs_default_per_type",
            "model_type",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    model_type: Mapped[str] = mapped_column(String(10))
    provider_model: Mapped[str] = mapped_column(String(100))
    cost_per_1k_input: Mapped[Decimal] = mapped_column(Numeric(12, 6), default=Decimal("0"))
    cost_per_1k_output: Mapped[Decimal] = mapped_column(Numeric(12, 6), default=Decimal("0"))
    cost_per_image: Mapped[Decimal] = mapped_column(Numeric(12, 6), default=Decimal("0"))
    tokens_per_credit: Mapped[int] = mapped_column(default=100)
    credits_per_image: Mapped[int] = mapped_column(default=1)
    # Text models: the most output tokens the provider lets one answer ask for (a larger
    # `max_tokens` is refused outright); None: not known, not checked.
    max_output_tokens: Mapped[int | None]
    quality_tier: Mapped[str] = mapped_column(String(20), default="basic")
    is_default: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
