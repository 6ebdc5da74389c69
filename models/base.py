"""Declarative base and the small column helpers every aggregate shares."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Opaque, non-sequential public ids (`job_3f9c...`), so ids leak no volume."""
    return f"{prefix}_{secrets.token_hex(12)}"


# Credits and token counts: 64-bit on PostgreSQL (int4 overflowed at 2^31); SQLite's
# INTEGER is 64-bit already, so its declared type stays as it was.
BIG_INT = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
        list[Any]: JSON,
        list[str]: JSON,
    }


class CreatedAt:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; treat them as the UTC they were written as."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK's SQL: `column` holds one of `values` (written from the module's constants)."""
    return f"{column} IN (" + ", ".join(f"'{value}'" for value in values) + ")"
