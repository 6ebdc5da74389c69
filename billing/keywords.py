"""Keywords in a site's workspace (limit: max_keywords across the account).

A bulk import that would cross the limit adds nothing: all or none. Keywords may carry
their research metrics (from the keyword library or an Ahrefs query); `KeywordEntry`
checks them, for every way in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import InvalidInput, NotFound
from billing.limits import ensure_room, lock_account
from billing.paging import Page, decode_int_cursor, encode_cursor, page_of, page_size
from billing.sites import get_site
from models import KEYWORD_INTENTS, Account, Keyword, as_utc
from models.keyword_library import MAX_DIFFICULTY

MAX_KEYWORD_LENGTH = 300
MAX_CPC = Decimal("99999999.99")  # Numeric(10, 2)
MAX_VOLUME = 2_000_000_000  # an INTEGER column on both databases
COUNTRY_CODE = re.compile(r"^[a-z]{2}$")


@dataclass(frozen=True)
class KeywordEntry:
    """A keyword and its metrics, checked on creation (`InvalidInput` names the field)."""

    keyword: str
    volume: int | None = None
    difficulty: int | None = None
    cpc: Decimal | None = None
    country: str | None = None
    intent: str | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            name, problem = next(iter(problems.items()))
            raise InvalidInput(
                f"Invalid keyword {self.keyword!r}: {name} {problem}.", fields=problems
            )


def _problems(entry: KeywordEntry) -> dict[str, str]:
    problems: dict[str, str] = {}
    if not entry.keyword.strip() or len(entry.keyword) > MAX_KEYWORD_LENGTH:
        problems["keyword"] = f"must be 1-{MAX_KEYWORD_LENGTH} characters"
    if entry.volume is not None and not 0 <= entry.volume <= MAX_VOLUME:
        problems["volume"] = f"must be 0-{MAX_VOLUME:,}"
    if entry.difficulty is not None and not 0 <= entry.difficulty <= MAX_DIFFICULTY:
        problems["difficulty"] = f"must be 0-{MAX_DIFFICULTY}"
    if entry.cpc is not None and (
        not entry.cpc.is_finite()
        or not 0 <= entry.cpc <= MAX_CPC
        or entry.cpc != round(entry.cpc, 2)
    ):
        problems["cpc"] = "must be a non-negative amount with at most 2 decimals"
    if entry.country is not None and not COUNTRY_CODE.match(entry.country):
        problems["country"] = "must be a 2-letter lowercase country code"
    if entry.intent is not None and entry.intent not in KEYWORD_INTENTS:
        problems["intent"] = f"must be one of {', '.join(KEYWORD_INTENTS)}"
    return problems


@dataclass(frozen=True)
class Import:
    added: list[Keyword]
    skipped: list[str]

    def body(self) -> dict[str, Any]:
        """The response to every way of adding keywords."""
        return {"added": [keyword_view(k) for k in self.added], "skipped": self.skipped}


def add_keywords(
    session: Session, account: Account, site_id: str, keywords: Sequence[str | KeywordEntry]
) -> Import:
    """Add what the site does not have yet, all or none within max_keywords."""
    lock_account(session, account.id)  # site deletion takes the same lock
    get_site(session, account.id, site_id)
    wanted: dict[str, KeywordEntry] = {}
    for item in keywords:
        entry = KeywordEntry(item) if isinstance(item, str) else item
        text = entry.keyword.strip()
        if text and text not in wanted:
            wanted[text] = entry
    existing = set(
        session.scalars(
            select(Keyword.keyword).where(Keyword.site_id == site_id, Keyword.keyword.in_(wanted))
        )
    )
    new = [(text, entry) for text, entry in wanted.items() if text not in existing]
    if new:
        ensure_room(session, account, "keywords", adding=len(new))
    added = [
        Keyword(
            account_id=account.id,
            site_id=site_id,
            keyword=text,
            volume=entry.volume,
            difficulty=entry.difficulty,
            cpc=entry.cpc,
            country=entry.country,
            intent=entry.intent,
        )
        for text, entry in new
    ]
    session.add_all(added)
    session.flush()
    return Import(added=added, skipped=[text for text in wanted if text in existing])


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
        shown = ", ".join(map(str, missing[:20]))
        raise NotFound(f"Keyword ids not found: {shown}.", ids=missing[:20])
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
        "cpc": str(keyword.cpc) if keyword.cpc is not None else None,
        "country": keyword.country,
        "intent": keyword.intent,
        "created_at": as_utc(keyword.created_at).isoformat(),
    }
