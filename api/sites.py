"""Sites (limit: the plan's max_sites): create, rename, delete (billing/sites.py says what
deletion keeps)."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.schemas import ListOf, SiteDeletionOut, SiteOut, responds
from api.security import current_account, require_key, require_role
from api.validation import Query, json_body, query_params
from billing import sites
from billing.text import BLANK_CLASS, NOT_BLANK, TRIMMED
from models import utcnow

bp = Blueprint("sites", __name__, url_prefix="/v1/sites")


class SiteBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"name": "blog", "domain": "example.com"}]},
    )

    name: Annotated[str, Field(max_length=200), TRIMMED, NOT_BLANK]
    domain: str | None = Field(default=None, max_length=300)


def _never_null_name(schema: dict[str, Any]) -> None:
    """No `default: null` in the schema (a site always has a name); not blank."""
    schema.pop("default", None)
    schema["pattern"] = f"[^{BLANK_CLASS}]"


class SitePatch(BaseModel):
    """At least one of `name` and `domain`."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    # Optional, yet never null: a site always has a name.
    name: Annotated[str, TRIMMED] = Field(  # type: ignore[assignment]
        default=None,
        max_length=200,
        json_schema_extra=_never_null_name,
    )
    domain: str | None = Field(default=None, max_length=300, description="null clears it.")


@bp.post("")
@responds(SiteOut, 201)
@require_key
@require_role("manage_sites")
@json_body(SiteBody)
def create_site(body: SiteBody) -> tuple[dict[str, Any], int]:
    """A new site (403 `limit_reached` past the plan's max_sites)."""
    return sites.site_view(sites.create_site(db(), current_account(), body.name, body.domain)), 201


class SitesQuery(Query):
    include_deleted: bool = Field(default=False, description="Also the deleted sites.")


@bp.get("")
@responds(ListOf[SiteOut])
@require_key
@query_params(SitesQuery)
def list_sites(query: SitesQuery) -> dict[str, Any]:
    """Live sites; `?include_deleted=true` adds the deleted ones (for job history)."""
    found = sites.list_sites(db(), current_account().id, include_deleted=query.include_deleted)
    return {"data": [sites.site_view(s) for s in found]}


@bp.get("/<site_id>")
@responds(SiteOut)
@require_key
def get_site(site_id: str) -> dict[str, Any]:
    """A site, deleted ones included (`status`, `deleted_at`), so job history resolves."""
    site = sites.get_site(db(), current_account().id, site_id, include_deleted=True)
    return sites.site_view(site)


@bp.patch("/<site_id>")
@responds(SiteOut)
@require_key
@require_role("manage_sites")
@json_body(SitePatch)
def update_site(site_id: str, body: SitePatch) -> dict[str, Any]:
    """Rename a site or change its domain (`"domain": null` clears it)."""
    site = sites.update_site(
        db(), current_account().id, site_id, name=body.name, domain=body.domain,
        clear_domain="domain" in body.model_fields_set and body.domain is None,
    )  # fmt: skip
    return sites.site_view(site)


@bp.delete("/<site_id>")
@responds(SiteDeletionOut)
@require_key
@require_role("manage_sites")
def delete_site(site_id: str) -> dict[str, Any]:
    """Delete a site: its keywords go (the keyword count frees), jobs and usage stay."""
    deletion = sites.delete_site(db(), current_account().id, site_id, utcnow())
    return {"site": sites.site_view(deletion.site), "keywords_deleted": deletion.keywords_deleted}
