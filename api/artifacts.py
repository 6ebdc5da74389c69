"""What jobs created: clusters, ideas, contents, image prompts and images, each a paged
listing filtered by `site_id` and `job_id`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint
from pydantic import BaseModel, Field

from api.db import db
from api.schemas import ClusterOut, ContentOut, IdeaOut, ImageOut, ImagePromptOut, Page, responds
from api.security import current_account, require_key
from api.validation import PageQuery, query_params
from billing import artifacts

bp = Blueprint("artifacts", __name__, url_prefix="/v1")


SHAPES: dict[str, type[BaseModel]] = {
    "clusters": ClusterOut,
    "ideas": IdeaOut,
    "contents": ContentOut,
    "image-prompts": ImagePromptOut,
    "images": ImageOut,
}


class ArtifactsQuery(PageQuery):
    site_id: str | None = Field(default=None, max_length=40)
    job_id: str | None = Field(default=None, max_length=40)


def _listing(kind: artifacts.ArtifactKind) -> Callable[[], dict[str, Any]]:
    def view(query: ArtifactsQuery) -> dict[str, Any]:
        page = artifacts.list_artifacts(
            db(),
            current_account().id,
            kind,
            site_id=query.site_id,
            job_id=query.job_id,
            cursor=query.cursor,
            limit=query.limit,
        )
        return page.body(kind.view)

    view.__name__ = "list_" + kind.path.replace("-", "_")
    view.__doc__ = f"The {kind.path.replace('-', ' ')} your {kind.operation} jobs created."
    return responds(Page[SHAPES[kind.path]])(require_key(query_params(ArtifactsQuery)(view)))


for _kind in artifacts.KINDS.values():
    bp.add_url_rule(f"/{_kind.path}", view_func=_listing(_kind), methods=["GET"])
