"""What jobs created (clusters, ideas, contents, image prompts, images), listed per
account and filtered by site or job, so nobody has to re-read each job's result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.job_views import get_job
from billing.paging import Page, decode_int_cursor, encode_cursor, page_of, page_size
from billing.sites import get_site
from models import Cluster, Content, Idea, Image, ImagePrompt, as_utc


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact: its URL path, table, the operation that makes it, and the
    fields of its public shape beside the common ones."""

    path: str
    model: Any
    operation: str
    fields: tuple[str, ...]

    def view(self, item: Any) -> dict[str, Any]:
        return {
            "id": item.id,
            "job_id": item.job_id,
            "site_id": item.site_id,
            **{name: getattr(item, name) for name in self.fields},
            "created_at": as_utc(item.created_at).isoformat(),
        }


KINDS = {
    kind.path: kind
    for kind in (
        ArtifactKind("clusters", Cluster, "clustering", ("name", "keywords")),
        ArtifactKind(
            "ideas", Idea, "idea_generation", ("title", "description", "content_type",
                                               "cluster_name"),
        ),
        ArtifactKind("contents", Content, "content_generation", ("title", "word_count", "body")),
        ArtifactKind("image-prompts", ImagePrompt, "image_prompt_extraction", ("prompt",)),
        ArtifactKind("images", Image, "image_generation", ("url", "prompt", "model")),
    )
}  # fmt: skip


def list_artifacts(
    session: Session,
    account_id: str,
    kind: ArtifactKind,
    *,
    site_id: str | None = None,
    job_id: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Any]:
    """Newest first; a site or job of another account is 404, like reading it."""
    limit = page_size(limit)
    model = kind.model
    query = select(model).where(model.account_id == account_id)
    if site_id is not None:
        site = get_site(session, account_id, site_id, include_deleted=True)  # history
        query = query.where(model.site_id == site.id)
    if job_id is not None:
        query = query.where(model.job_id == get_job(session, account_id, job_id).id)
    if cursor:
        query = query.where(model.id < decode_int_cursor(cursor))
    rows = session.scalars(query.order_by(model.id.desc()).limit(limit + 1)).all()
    return page_of(rows, limit, lambda item: encode_cursor(str(item.id)))
