"""The keyword library: pre-researched keywords every account may browse for free.

Global (no account): admins import it from CSV, customers copy rows into their sites.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Index, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, utcnow

KEYWORD_INTENTS = ("informational", "navigational", "commercial", "transactional")
MAX_DIFFICULTY = 100

# Byte order ("C") on PostgreSQL, as SQLite's default BINARY collation: a text prefix is
# then one range of the (keyword, country) index, whatever the server's locale.
KeywordText = String(300).with_variant(String(300, collation="C"), "postgresql")


class LibraryKeyword(CreatedAt, Base):
    __tablename__ = "keyword_library"
    __table_args__ = (
        # The import's upsert key; also serves prefix search (a range on `keyword`).
        UniqueConstraint("keyword", "country"),
        CheckConstraint("volume >= 0", name="volume_not_negative"),
        CheckConstraint(f"difficulty BETWEEN 0 AND {MAX_DIFFICULTY}", name="difficulty_range"),
        CheckConstraint("cpc >= 0", name="cpc_not_negative"),
        # Browsing walks one of these in (volume, id) order, newest page by cursor.
        Index("ix_keyword_library_volume", "volume", "id"),
        Index("ix_keyword_library_country_volume", "country", "volume", "id"),
        Index("ix_keyword_library_topic_volume", "topic", "volume", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    keyword: Mapped[str] = mapped_column(KeywordText)
    country: Mapped[str] = mapped_column(String(2))
    volume: Mapped[int]
    difficulty: Mapped[int]
    cpc: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    intent: Mapped[str | None] = mapped_column(String(20))
    topic: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
