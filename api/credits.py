"""The caller's credits: every posted movement (newest first), and buying more."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.payments import with_checkout
from api.security import current_account, require_key, require_role
from api.validation import json_body, query_int
from billing import ledger, purchases

bp = Blueprint("credits", __name__, url_prefix="/v1/credits")


@bp.get("/transactions")
@require_key
def transactions() -> dict[str, Any]:
    page = ledger.list_transactions(
        db(), current_account().id, cursor=request.args.get("cursor"), limit=query_int("limit", 20)
    )
    return page.body(ledger.transaction_view)


class TopupBody(BaseModel):
    """Only how many credits: the price comes from the plan, and a payment grants them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    credits: int = Field(ge=1, le=10_000_000)


@bp.post("/topup")
@require_key
@require_role("manage_billing")
@json_body(TopupBody)
def topup(body: TopupBody) -> tuple[dict[str, Any], int]:
    """Buy credits: a pending purchase, granted when its payment is confirmed."""
    purchase = purchases.create_topup(db(), current_account(), body.credits)
    return {"purchase": with_checkout(purchase)}, 201
