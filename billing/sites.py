"""Sites: the workspaces an account's keywords and jobs belong to (limit: max_sites)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import NotFound
from billing.limits import ensure_room
from models import Account, Site, as_utc


def create_site(session: Session, account: Account, name: str, domain: str | None) -> Site:
    ensure_room(session, account, "sites")
    site = Site(account_id=account.id, name=name, domain=domain)
    session.add(site)
    session.flush()
    return site


def get_site(session: Session, account_id: str, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None or site.account_id != account_id:
        raise NotFound(f"Site {site_id!r} not found.")
    return site


def list_sites(session: Session, account_id: str) -> list[Site]:
    query = select(Site).where(Site.account_id == account_id).order_by(Site.created_at)
    return list(session.scalars(query))


def site_view(site: Site) -> dict[str, Any]:
    return {
        "id": site.id,
        "name": site.name,
        "domain": site.domain,
        "created_at": as_utc(site.created_at).isoformat(),
    }
