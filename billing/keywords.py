"""Keywords in a site's workspace (limit: max_keywords across the account).

A bulk import that would cross the limit adds nothing: all or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import NotFound
from billing.limits import ensure_room
from billing.sites import get_site
from models import Account, Keyword, as_utc


@dataclass(frozen=True)
class Import:
    added: list[Keyword]
    skipped: list[str]


def add_keywords(session: Session, account: Account, site_id: str, keywords: list[str]) -> Import:
    get_site(session, account.id, site_id)
    wanted = list(dict.fromkeys(k.strip() for k in keywords if k.strip()))
    existing = set(
        session.scalars(
            select(Keyword.keyword).where(Keyword.site_id == site_id, Keyword.keyword.in_(wanted))
        )
    )
    new = [k for k in wanted if k not in existing]
    if new:
        ensure_room(session, account, "keywords", adding=len(new))
    added = [Keyword(account_id=account.id, site_id=site_id, keyword=k) for k in new]
    session.add_all(added)
    session.flush()
    return Import(added=added, skipped=[k for k in wanted if k in existing])


def list_keywords(
    session: Session, account_id: str, site_id: str | None, after_id: int | None, limit: int
) -> tuple[list[Keyword], int | None]:
    query = select(Keyword).where(Keyword.account_id == account_id)
    if site_id is not None:
        query = query.where(Keyword.site_id == site_id)
    if after_id is not None:
        query = query.where(Keyword.id > after_id)
    rows = list(session.scalars(query.order_by(Keyword.id).limit(limit + 1)))
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


def delete_keyword(session: Session, account_id: str, keyword_id: int) -> None:
    keyword = session.get(Keyword, keyword_id)
    if keyword is None or keyword.account_id != account_id:
        raise NotFound(f"Keyword {keyword_id} not found.")
    session.delete(keyword)


def keyword_view(keyword: Keyword) -> dict[str, Any]:
    return {
        "id": keyword.id,
        "site_id": keyword.site_id,
        "keyword": keyword.keyword,
        "volume": keyword.volume,
        "difficulty": keyword.difficulty,
        "created_at": as_utc(keyword.created_at).isoformat(),
    }
