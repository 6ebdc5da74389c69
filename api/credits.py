"""The caller's credits: every posted movement (newest first), and buying more."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.payments import with_checkout
from api.schemas import Page, PurchaseAnswer, TransactionOut, responds
from api.security import current_account, require_key, require_role
from api.validation import PageQuery, json_body, query_params
from billing import ledger, purchases
from billing.purchases import MIN_TOPUP_CREDITS

bp = Blueprint("credits", __name__, url_prefix="/v1/credits")


@bp.get("/transactions")
@responds(Page[TransactionOut])
@require_key
@query_params(PageQuery)
def transactions(query: PageQuery) -> dict[str, Any]:
    """Every posted credit movement, newest first."""
    page = ledger.list_transactions(
        db(), current_account().id, cursor=query.cursor, limit=query.limit
    )
    return page.body(ledger.transaction_view)


class TopupBody(BaseModel):
    """Only how many credits: the price comes from the plan, and a payment grants them."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"credits": 5000}]}
    )

    credits: int = Field(ge=MIN_TOPUP_CREDITS, le=10_000_000)


@bp.post("/topup")
@responds(PurchaseAnswer, 201, errors=(502,))
@require_key
@require_role("manage_billing")
@json_body(TopupBody)
def topup(body: TopupBody) -> tuple[dict[str, Any], int]:
    """Buy credits: a pending purchase, granted when its payment is confirmed."""
    purchase = purchases.create_topup(db(), current_account(), body.credits)
    return {"purchase": with_checkout(purchase)}, 201
