"""The keyword library: free to browse for every account, copied into sites within
max_keywords; admins import it from CSV."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.db import db
from api.errors import invalid
from api.security import current_account, require_admin, require_key, require_role
from api.validation import csv_body, json_body, query_int
from billing import keyword_library, keywords
from models import utcnow
from settings import get_settings

bp = Blueprint("keyword_library", __name__, url_prefix="/v1")


class BrowseQuery(BaseModel):
    """Query string of a browse; numbers arrive as text, so this model is not strict."""

    model_config = ConfigDict(extra="ignore")

    q: str | None = Field(default=None, min_length=1, max_length=100)
    country: str | None = Field(default=None, max_length=2)
    topic: str | None = Field(default=None, max_length=100)
    intent: str | None = Field(default=None, max_length=20)
    volume_min: int | None = Field(default=None, ge=0, le=keywords.MAX_VOLUME)
    volume_max: int | None = Field(default=None, ge=0, le=keywords.MAX_VOLUME)
    difficulty_min: int | None = Field(default=None, ge=0, le=100)
    difficulty_max: int | None = Field(default=None, ge=0, le=100)


class AddBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    site_id: str = Field(max_length=40)
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=5000)


@bp.get("/keyword-library")
@require_key
def browse() -> dict[str, Any]:
    """Browse the library (free): `q` (prefix), country, topic, intent, volume and
    difficulty ranges; most searched first, cursor-paged."""
    try:
        given = {name: value for name, value in request.args.items() if value.strip()}
        query = BrowseQuery.model_validate(given)
    except ValidationError as exc:
        raise invalid(exc) from None
    values = query.model_dump()
    for name in ("country", "topic", "intent"):
        values[name] = values[name].strip().lower() if values[name] else None
    page = keyword_library.browse(
        db(),
        keyword_library.LibraryFilter(**values),
        request.args.get("cursor"),
        query_int("limit", 50),
    )
    return page.body(keyword_library.library_view)


@bp.post("/keyword-library/add")
@require_key
@require_role("manage_keywords")
@json_body(AddBody)
def add_to_site(body: AddBody) -> tuple[dict[str, Any], int]:
    """Copy library keywords, with their metrics, into a site: all or none within
    max_keywords; ones the site already has are skipped."""
    result = keyword_library.add_to_site(db(), current_account(), body.site_id, body.ids)
    return result.body(), 201


@bp.post("/admin/keyword-library/import")
@require_admin
@csv_body(lambda: get_settings().keyword_import_max_bytes)
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
