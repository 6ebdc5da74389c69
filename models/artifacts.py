"""What jobs create, kept so usage can report "items created" per operation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from models.base import Base, CreatedAt


class _Artifact(CreatedAt):
    __tablename__: str

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Any, ...]:
        # Listings page one account's items newest first (id desc) without a sort.
        return (Index(f"ix_{cls.__tablename__}_account_id_id", "account_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"))


class Cluster(_Artifact, Base):
    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(String(300))
    keywords: Mapped[list[str]]


class Idea(_Artifact, Base):
    __tablename__ = "ideas"

    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    content_type: Mapped[str] = mapped_column(String(50), default="article")
    cluster_name: Mapped[str] = mapped_column(String(300), default="")


class Content(_Artifact, Base):
    __tablename__ = "contents"

    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)
    word_count: Mapped[int]


class ImagePrompt(_Artifact, Base):
    __tablename__ = "image_prompts"

    prompt: Mapped[str] = mapped_column(Text)


class Image(_Artifact, Base):
    __tablename__ = "images"

    url: Mapped[str] = mapped_column(String(2000))
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(100))
