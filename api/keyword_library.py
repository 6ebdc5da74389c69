"""The keyword library: free to browse for every account, copied into sites within
max_keywords; admins import it from CSV."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from flask import Blueprint
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api.db import db
from api.schemas import ImportOut, KeywordsAdded, LibraryKeywordOut, Page, responds
from api.security import current_account, require_admin, require_key, require_role
from api.validation import PageQuery, QueryInt, csv_body, integral, json_body, query_params
from billing import keyword_library, keywords
from billing.paging import MAX_PAGE_SIZE
from models import utcnow
from models.keyword_library import KEYWORD_INTENTS
from settings import get_settings

bp = Blueprint("keyword_library", __name__, url_prefix="/v1")


def _blank_is_absent(value: Any) -> Any:
    """An empty search box filters nothing."""
    return None if isinstance(value, str) and not value.strip() else value


SearchText = Annotated[str | None, BeforeValidator(_blank_is_absent)]


Volume = Annotated[int, Field(ge=0, le=keywords.MAX_VOLUME), BeforeValidator(integral)]
Difficulty = Annotated[int, Field(ge=0, le=100), BeforeValidator(integral)]


class BrowseQuery(PageQuery):
    """A browse's filters; ranges are inclusive (a minimum above its maximum is a 422).
    Blank `q`, `country` and `topic` filter nothing."""

    limit: QueryInt = Field(default=50, ge=1, le=MAX_PAGE_SIZE, description="Rows per page.")
    q: SearchText = Field(
        default=None, max_length=100, description="The keyword's start, any case."
    )
    country: SearchText = Field(
        default=None, pattern=r"^(\s*|[A-Za-z]{2})$", description="2-letter code, any case."
    )
    topic: SearchText = Field(default=None, max_length=100)
    intent: Literal[KEYWORD_INTENTS] | None = None  # type: ignore[valid-type]
    volume_min: Volume | None = None
    volume_max: Volume | None = None
    difficulty_min: Difficulty | None = None
    difficulty_max: Difficulty | None = None


class AddBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    site_id: str = Field(max_length=40)
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=5000)


@bp.get("/keyword-library")
@responds(Page[LibraryKeywordOut])
@require_key
@query_params(BrowseQuery)
def browse(query: BrowseQuery) -> dict[str, Any]:
    """Browse the library (free): `q` (prefix), country, topic, intent, volume and
    difficulty ranges; most searched first, cursor-paged."""
    values = query.model_dump(exclude={"limit", "cursor"})
    for name in ("country", "topic"):
        values[name] = values[name].strip().lower() if values[name] else None
    page = keyword_library.browse(
        db(), keyword_library.LibraryFilter(**values), query.cursor, query.limit
    )
    return page.body(keyword_library.library_view)


@bp.post("/keyword-library/add")
@responds(KeywordsAdded, 201)
@require_key
@require_role("manage_keywords")
@json_body(AddBody)
def add_to_site(body: AddBody) -> tuple[dict[str, Any], int]:
    """Copy library keywords, with their metrics, into a site: all or none within
    max_keywords; ones the site already has are skipped."""
    result = keyword_library.add_to_site(db(), current_account(), body.site_id, body.ids)
    return result.body(), 201


LIBRARY_CSV = {
    "type": "string",
    "description": "A header naming the columns (any order; keyword, country, volume and "
    "difficulty required; cpc, intent, topic optional), then one row per keyword. The "
    "pattern describes the simplest such file.",
    "pattern": r"^keyword,country,volume,difficulty(\r?\n[a-z0-9]{1,30}( [a-z0-9]{1,30}){0,3}"
    r",[a-z]{2},[0-9]{1,9},(100|[1-9]?[0-9]))*\r?\n?$",
    "examples": ["keyword,country,volume,difficulty\nrunning shoes,us,12000,35\n"],
}


@bp.post("/admin/keyword-library/import")
@responds(ImportOut)
@require_admin
@csv_body(lambda: get_settings().keyword_import_max_bytes, LIBRARY_CSV)
def import_csv(lines: Iterable[str]) -> dict[str, Any]:
    """Upsert the library from a CSV (keyword,country,volume,difficulty[,cpc,intent,topic]),
    keyed on keyword+country: importing the same file twice changes nothing."""
    result = keyword_library.import_csv(db(), lines, utcnow())
    return {
        "rows": result.rows,
        "inserted": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
    }
