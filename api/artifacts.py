"""What jobs created: clusters, ideas, contents, image prompts and images, each a paged
listing filtered by `site_id` and `job_id`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, request

from api.db import db
from api.security import current_account, require_key
from api.validation import query_int
from billing import artifacts

bp = Blueprint("artifacts", __name__, url_prefix="/v1")


def _listing(kind: artifacts.ArtifactKind) -> Callable[[], dict[str, Any]]:
    def view() -> dict[str, Any]:
        page = artifacts.list_artifacts(
            db(),
            current_account().id,
            kind,
            site_id=request.args.get("site_id"),
            job_id=request.args.get("job_id"),
            cursor=request.args.get("cursor"),
            limit=query_int("limit", 20),
        )
        return page.body(kind.view)

    view.__name__ = "list_" + kind.path.replace("-", "_")
    view.__doc__ = f"The {kind.path.replace('-', ' ')} your {kind.operation} jobs created."
    return require_key(view)


for _kind in artifacts.KINDS.values():
    bp.add_url_rule(f"/{_kind.path}", view_func=_listing(_kind), methods=["GET"])
