"""The four hard limits of the seeds: sites, users, keywords, Ahrefs queries a month."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Account, Keyword, Site, User

LIMIT_NAMES = {
    "sites": "Sites",
    "users": "Team Users",
    "keywords": "Keywords",
    "ahrefs_queries": "Keyword Research Queries",
}


def _count(session: Session, model: Any, account_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(model).where(model.account_id == account_id)
        )
        or 0
    )


def limits_report(session: Session, account: Account) -> dict[str, dict[str, Any]]:
    plan = account.plan
    return {
        "sites": {
            "used": _count(session, Site, account.id),
            "limit": plan.max_sites if plan else 0,
        },
        "users": {
            "used": _count(session, User, account.id),
            "limit": plan.max_users if plan else 0,
        },
        "keywords": {
            "used": _count(session, Keyword, account.id),
            "limit": plan.max_keywords if plan else 0,
        },
        "ahrefs_queries": {
            "used": account.usage_ahrefs_queries,
            "limit": plan.max_ahrefs_queries if plan else 0,
        },
    }
