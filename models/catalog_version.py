"""The catalog's version stamp: a new random value on every change to plans or model
prices, written by the database itself (triggers, migration 0009), whoever makes the
change (the admin API, `ops seed`, an operator's SQL). A process that caches the catalog
compares one cheap read of the stamp with its copy's; random, so a rolled-back change's
stamp never comes back and no copy can be mistaken for current."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, ScalarSelect, select
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class CatalogVersion(Base):
    __tablename__ = "catalog_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


# The stamp as a scalar subquery, for a statement a request makes anyway to carry.
CATALOG_VERSION: ScalarSelect[int] = (
    select(CatalogVersion.version).where(CatalogVersion.id == 1).scalar_subquery()
)
