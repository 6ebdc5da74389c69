"""Sites (limit: the plan's max_sites)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import current_account, require_key, require_role
from api.validation import json_body
from billing import sites

bp = Blueprint("sites", __name__, url_prefix="/v1/sites")


class SiteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    domain: str | None = Field(default=None, max_length=300)


@bp.post("")
@require_key
@require_role("manage_sites")
@json_body(SiteBody)
def create_site(body: SiteBody) -> tuple[dict[str, Any], int]:
    return sites.site_view(sites.create_site(db(), current_account(), body.name, body.domain)), 201


@bp.get("")
@require_key
def list_sites() -> dict[str, Any]:
    return {"data": [sites.site_view(s) for s in sites.list_sites(db(), current_account().id)]}


@bp.get("/<site_id>")
@require_key
def get_site(site_id: str) -> dict[str, Any]:
    return sites.site_view(sites.get_site(db(), current_account().id, site_id))
