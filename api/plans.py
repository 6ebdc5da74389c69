"""Public plan list: what a visitor can sign up for or upgrade to."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.db import db
from api.schemas import ListOf, PlanOut, responds
from billing import accounts, plans

bp = Blueprint("plans", __name__, url_prefix="/v1/plans")


@bp.get("")
@responds(ListOf[PlanOut])
def list_plans() -> dict[str, Any]:
    """The plans you can sign up for or move to."""
    return {"data": [accounts.plan_view(plan) for plan in plans.list_public(db())]}
