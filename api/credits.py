"""The caller's credit history: every posted movement, newest first."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import current_account, require_key, require_role
from api.validation import json_body, query_int
from billing import credits, ledger

bp = Blueprint("credits", __name__, url_prefix="/v1/credits")


@bp.get("/transactions")
@require_key
def transactions() -> dict[str, Any]:
    page = ledger.list_transactions(
        db(), current_account().id, cursor=request.args.get("cursor"), limit=query_int("limit", 20)
    )
    return page.body(ledger.transaction_view)


class TopupBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    credits: int = Field(ge=1, le=10_000_000)
    payment_reference: str = Field(min_length=1, max_length=200)


@bp.post("/topup")
@require_key
@require_role("manage_billing")
@json_body(TopupBody)
def topup(body: TopupBody) -> tuple[dict[str, Any], int]:
    """Buy credits (plans with allow_credit_topup); the payment reference is once-only."""
    txn = credits.topup(db(), current_account(), body.credits, body.payment_reference)
    return ledger.transaction_view(txn), 201
