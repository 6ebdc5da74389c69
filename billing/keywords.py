"""Keywords in a site's workspace (limit: max_keywords across the account).

A bulk import that would cross the limit adds nothing: all or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import InvalidInput, NotFound
from billing.limits import ensure_room
from billing.paging import Page, decode_int_cursor, encode_cursor, page_of, page_size
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
    session: Session, account_id: str, site_id: str | None, cursor: str | None, limit: int
) -> Page[Keyword]:
    limit = page_size(limit)
    query = select(Keyword).where(Keyword.account_id == account_id)
    if site_id is not None:
        query = query.where(Keyword.site_id == site_id)
    if cursor:
        query = query.where(Keyword.id > decode_int_cursor(cursor))
    rows = session.scalars(query.order_by(Keyword.id).limit(limit + 1)).all()
    return page_of(rows, limit, lambda keyword: encode_cursor(str(keyword.id)))


def expand_keyword_ids(
    session: Session, account_id: str, site_id: str | None, job_input: dict[str, Any]
) -> dict[str, Any]:
    """Clustering input: `keyword_ids` (the account's, in the site if given) joined to
    `keywords`, without repeats, at most 1000."""
    ids: list[int] = job_input.pop("keyword_ids", [])
    if not ids:
        return job_input
    query = select(Keyword.id, Keyword.keyword).where(
        Keyword.account_id == account_id, Keyword.id.in_(ids)
    )
    if site_id is not None:
        query = query.where(Keyword.site_id == site_id)
    found = {kw_id: keyword for kw_id, keyword in session.execute(query)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidInput(
            f"Unknown keyword ids: {missing[:20]}.", fields={"input.keyword_ids": "unknown ids"}
        )
    keywords = list(dict.fromkeys([*job_input["keywords"], *(found[i] for i in ids)]))
    if len(keywords) > 1000:
        raise InvalidInput("Clustering takes at most 1000 keywords.")
    return {**job_input, "keywords": keywords}


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
