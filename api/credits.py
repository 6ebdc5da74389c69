"""The caller's credit history: every posted movement, newest first."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import current_account, require_key, require_role
from api.validation import json_body, query_int
from billing import credits, ledger
from billing.errors import InvalidInput
from billing.jobs import MAX_PAGE_SIZE, decode_int_cursor, encode_cursor

bp = Blueprint("credits", __name__, url_prefix="/v1/credits")


@bp.get("/transactions")
@require_key
def transactions() -> dict[str, Any]:
    limit = query_int("limit", 20)
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE_SIZE}.", fields={"limit": "1-100"}
        )
    cursor = request.args.get("cursor")
    rows, before = ledger.list_transactions(
        db(),
        current_account().id,
        before_id=decode_int_cursor(cursor) if cursor else None,
        limit=limit,
    )
    return {
        "data": [ledger.transaction_view(txn) for txn in rows],
        "next_cursor": encode_cursor(str(before)) if before is not None else None,
    }


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
