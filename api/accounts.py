"""The caller's own account: status, plan, credits and the four limits."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.db import db
from api.security import current_account, require_key
from billing import accounts

bp = Blueprint("accounts", __name__, url_prefix="/v1")


@bp.get("/account")
@require_key
def get_account() -> dict[str, Any]:
    return accounts.account_view(db(), current_account())
