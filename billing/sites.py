"""Sites: the workspaces an account's keywords and jobs belong to (limit: max_sites).

Deleting a site is a soft delete: its keywords are deleted (freeing the keyword count),
the site stops counting against max_sites and takes no new keywords or jobs, and its
row stays, marked `deleted_at`, so the jobs, usage logs and artifacts that name it keep
their history (jobs still running on it finish and are charged as usual).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from billing.accounts import record_event
from billing.errors import InvalidInput, NotFound
from billing.limits import ensure_room, lock_account
from models import Account, Keyword, Site, as_utc


@dataclass(frozen=True)
class Deletion:
    site: Site
    keywords_deleted: int


def create_site(session: Session, account: Account, name: str, domain: str | None) -> Site:
    ensure_room(session, account, "sites")
    site = Site(account_id=account.id, name=name, domain=domain)
    session.add(site)
    session.flush()
    return site


def get_site(
    session: Session, account_id: str, site_id: str, *, include_deleted: bool = False
) -> Site:
    """A live site of the account (what jobs and keywords may use); deleted ones only
    when asked, for reading history."""
    site = session.get(Site, site_id)
    if (
        site is None
        or site.account_id != account_id
        or (site.deleted_at is not None and not include_deleted)
    ):
        raise NotFound(f"Site {site_id!r} not found.")
    return site


def list_sites(session: Session, account_id: str, *, include_deleted: bool = False) -> list[Site]:
    query = select(Site).where(Site.account_id == account_id)
    if not include_deleted:
        query = query.where(Site.deleted_at.is_(None))
    return list(session.scalars(query.order_by(Site.created_at, Site.id)))


def update_site(
    session: Session,
    account_id: str,
    site_id: str,
    *,
    name: str | None = None,
    domain: str | None = None,
    clear_domain: bool = False,
) -> Site:
    if name is None and domain is None and not clear_domain:
        raise InvalidInput("Send 'name' or 'domain' to change.", fields={"name": "or domain"})
    site = get_site(session, account_id, site_id)
    if name is not None:
        site.name = name
    if domain is not None or clear_domain:
        site.domain = domain
    session.flush()
    return site


def delete_site(session: Session, account_id: str, site_id: str, now: datetime) -> Deletion:
    """Delete the site's keywords and mark it deleted, once (a second delete is a 404)."""
    lock_account(session, account_id)  # keyword additions check the site under this lock
    site = get_site(session, account_id, site_id)
    marked = session.execute(
        update(Site)
        .where(Site.id == site.id, Site.deleted_at.is_(None))
        .values(deleted_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not marked:  # pragma: no cover - the account lock makes this unreachable
        raise NotFound(f"Site {site_id!r} not found.")
    removed = session.execute(
        delete(Keyword)
        .where(Keyword.site_id == site.id)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    record_event(
        session, account_id, "site_deleted",
        site_id=site.id, name=site.name, keywords_deleted=int(removed),
    )  # fmt: skip
    session.refresh(site)
    return Deletion(site=site, keywords_deleted=int(removed))


def site_view(site: Site) -> dict[str, Any]:
    return {
        "id": site.id,
        "name": site.name,
        "domain": site.domain,
        "status": "deleted" if site.deleted_at else "active",
        "deleted_at": as_utc(site.deleted_at).isoformat() if site.deleted_at else None,
        "created_at": as_utc(site.created_at).isoformat(),
    }
