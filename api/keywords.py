"""Keywords (limit: max_keywords) and live keyword research (limit: Ahrefs queries/month)."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api import ahrefs
from api.db import commit_now, db
from api.errors import ApiError
from api.schemas import KeywordOut, KeywordsAdded, Page, ResearchOut, responds
from api.security import current_account, require_key, require_role
from api.validation import PageQuery, QueryInt, json_body, query_params
from billing import keywords, limits
from billing.amounts import Price
from billing.paging import MAX_PAGE_SIZE
from billing.text import ShortText
from models import KEYWORD_INTENTS
from models.db import transaction
from models.keyword_library import MAX_DIFFICULTY

bp = Blueprint("keywords", __name__, url_prefix="/v1")

KeywordText = ShortText
RESEARCH_BUSY_RETRY_SECONDS = 5


class KeywordItem(BaseModel):
    """A keyword with its metrics, as keyword research answers them (billing checks the
    ranges)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keyword: KeywordText
    volume: int | None = Field(default=None, ge=0, le=keywords.MAX_VOLUME)
    difficulty: int | None = Field(default=None, ge=0, le=MAX_DIFFICULTY)
    cpc: Price | None = None
    country: str | None = Field(default=None, pattern=r"^[a-z]{2}$")
    intent: Literal[KEYWORD_INTENTS] | None = None  # type: ignore[valid-type]

    def entry(self) -> keywords.KeywordEntry:
        return keywords.KeywordEntry(**self.model_dump())


class KeywordsBody(BaseModel):
    """One keyword (`keyword`) or a bulk import (`keywords`: texts, or objects carrying
    their metrics), into one site."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["keyword"], "properties": {"keyword": {"type": "string"}}},
                {"required": ["keywords"], "properties": {"keywords": {"minItems": 1}}},
            ],
            "examples": [{"site_id": "site_b4fe77e8bdad986144fa35ba", "keywords": ["trail shoes"]}],
        },
    )

    site_id: str = Field(max_length=40)
    keyword: KeywordText | None = None
    keywords: list[KeywordText | KeywordItem] = Field(default_factory=list, max_length=5000)


class ResearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seed: KeywordText
    limit: int = Field(default=10, ge=1, le=100)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")


@bp.post("/keywords")
@responds(KeywordsAdded, 201)
@require_key
@require_role("manage_keywords")
@json_body(KeywordsBody)
def add_keywords(body: KeywordsBody) -> tuple[dict[str, Any], int]:
    """Add keywords to a site: all or none within max_keywords (403 `limit_reached`)."""
    wanted: list[str | keywords.KeywordEntry] = [body.keyword] if body.keyword else []
    wanted += [k if isinstance(k, str) else k.entry() for k in body.keywords]
    if not wanted:
        raise ApiError(
            422,
            "invalid_request",
            "Send 'keyword' or a non-empty 'keywords' list.",
            fields={"keywords": "at least one keyword"},
        )
    result = keywords.add_keywords(db(), current_account(), body.site_id, wanted)
    return result.body(), 201


class KeywordsQuery(PageQuery):
    limit: QueryInt = Field(default=50, ge=1, le=MAX_PAGE_SIZE, description="Rows per page.")
    site_id: str | None = Field(default=None, max_length=40, description="One site's only.")


@bp.get("/keywords")
@responds(Page[KeywordOut])
@require_key
@query_params(KeywordsQuery)
def list_keywords(query: KeywordsQuery) -> dict[str, Any]:
    """Your saved keywords, oldest first."""
    page = keywords.list_keywords(
        db(), current_account().id, query.site_id, query.cursor, query.limit
    )
    return page.body(keywords.keyword_view)


@bp.delete("/keywords/<int(min=1, max=2147483647):keyword_id>")
@responds(None, 204)
@require_key
@require_role("manage_keywords")
def delete_keyword(keyword_id: int) -> tuple[str, int]:
    """Delete a keyword (the count frees)."""
    keywords.delete_keyword(db(), current_account().id, keyword_id)
    return "", 204


@bp.post("/keyword-research")
@responds(ResearchOut, errors=(502,))
@require_key
@require_role("research_keywords")
@json_body(ResearchBody)
def keyword_research(body: ResearchBody) -> dict[str, Any]:
    """One live query counted against the month; given back if the service fails (502)
    or this server already runs as many as it allows (503, retry shortly).

    Each result carries its metrics; POST them to /v1/keywords to save them in a site."""
    account = current_account()
    counted = limits.consume_ahrefs_query(db(), account)
    commit_now()
    try:
        result = ahrefs.research(body.seed, body.limit, body.country)
    except ahrefs.ResearchUnavailable as exc:
        with transaction() as session:
            limits.refund_ahrefs_query(session, account.id, counted)
        if isinstance(exc, ahrefs.ResearchBusy):
            raise ApiError(
                503,
                "research_busy",
                "Too many keyword research queries are running; retry in a few seconds. "
                "The query was not counted.",
                retry_after=RESEARCH_BUSY_RETRY_SECONDS,
            ) from None
        raise ApiError(
            502,
            "research_unavailable",
            "Keyword research is unavailable right now; the query was not counted.",
        ) from None
    return {
        "seed": result.seed,
        "keywords": result.keywords,
        "queries": {
            "used": counted.used,
            "limit": limits.plan_limit(account.plan, "ahrefs_queries"),
        },
    }
