"""The credit ledger: reserve -> settle | release | expire, and grants.

Every balance change is one conditional UPDATE checked by its row count (no
read-modify-write in Python, no lock held across a provider call). Every function
takes the caller's session and never commits: the caller's transaction makes the
hold, the job row and the ledger rows appear together or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from billing.errors import (
    AccountInactive,
    BillingError,
    DuplicateReference,
    InsufficientCredits,
    NotFound,
)
from billing.pricing import Charge
from models import Account, CreditReservation, CreditTransaction, CreditUsageLog, as_utc, utcnow

log = logging.getLogger(__name__)

# Statuses that may spend credits (DESIGN.md: the reserve UPDATE's WHERE clause).
SPENDING_STATUSES = ("trial", "active", "pending_payment")
GRANT_TYPES = ("registration", "renewal", "topup", "bank_transfer", "adjustment")


@dataclass(frozen=True)
class UsageRecord:
    operation: str
    model: str
    tokens_in: int
    tokens_out: int
    images: int
    site_id: str | None
    items_created: int


@dataclass(frozen=True)
class Posting:
    """A posted deduction, as settle wrote it (plain values: the hot path skips the ORM)."""

    amount: int
    balance_after: int
    metadata: dict[str, Any]


# The hot path (reserve, settle, release) runs prebuilt Core statements with bound
# parameters: no ORM flush, no statement building per call (see bench/ledger.py).
_accounts = cast(Table, Account.__table__)
_holds = cast(Table, CreditReservation.__table__)

_RESERVE = (
    update(_accounts)
    .where(
        _accounts.c.id == bindparam("p_account"),
        _accounts.c.credits - _accounts.c.reserved_credits >= bindparam("p_amount"),
        _accounts.c.status.in_(SPENDING_STATUSES),
    )
    .values(reserved_credits=_accounts.c.reserved_credits + bindparam("p_amount"))
)
_INSERT_HOLD = insert(_holds)
_CLOSE_HOLD = (
    update(_holds)
    .where(_holds.c.job_id == bindparam("p_job"), _holds.c.status == "held")
    .values(status=bindparam("p_status"), resolved_at=bindparam("p_now"))
    .returning(_holds.c.account_id, _holds.c.amount)
)
_POST_CHARGE = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("p_account"))
    .values(
        credits=_accounts.c.credits - bindparam("p_cost"),
        reserved_credits=_accounts.c.reserved_credits - bindparam("p_hold"),
    )
    .returning(_accounts.c.credits)
)
_UNRESERVE = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("p_account"))
    .values(reserved_credits=_accounts.c.reserved_credits - bindparam("p_hold"))
)
_INSERT_TRANSACTION = insert(cast(Table, CreditTransaction.__table__))
_INSERT_USAGE = insert(cast(Table, CreditUsageLog.__table__))


def reserve(session: Session, account_id: str, job_id: str, amount: int, ttl: timedelta) -> None:
    """Hold `amount` credits for a job, or raise without writing anything."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    result = session.execute(_RESERVE, {"p_account": account_id, "p_amount": amount})
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise _refusal(session, account_id, amount)
    now = utcnow()
    session.execute(
        _INSERT_HOLD,
        {
            "account_id": account_id,
            "job_id": job_id,
            "amount": amount,
            "status": "held",
            "expires_at": now + ttl,
            "created_at": now,
            "resolved_at": None,
        },
    )


def _refusal(session: Session, account_id: str, amount: int) -> BillingError:
    row = session.execute(
        select(Account.status, Account.credits, Account.reserved_credits).where(
            Account.id == account_id
        )
    ).one_or_none()
    if row is None:
        return NotFound("Account not found.")
    if row.status not in SPENDING_STATUSES:
        return AccountInactive(row.status)
    return InsufficientCredits(
        required=amount, available=max(row.credits - row.reserved_credits, 0)
    )


def _close_hold(session: Session, job_id: str, status: str) -> Any:
    """held -> status, once: the gate that makes settle and release exactly-once."""
    return session.execute(
        _CLOSE_HOLD, {"p_job": job_id, "p_status": status, "p_now": utcnow()}
    ).one_or_none()


def settle(session: Session, job_id: str, charge: Charge, usage: UsageRecord) -> Posting | None:
    """Post the actual cost of a held job; None if the hold was already resolved.

    The held -> settled transition is the gate: a redelivered task finds it closed
    and changes nothing. The unique indexes on the deduction and usage log back it.
    """
    hold = _close_hold(session, job_id, "settled")
    if hold is None:
        return None
    credits = min(charge.credits, hold.amount)
    if charge.estimate_miss:
        log.warning(
            "estimate miss on job %s: actual cost exceeded the hold of %s; charged the hold",
            job_id,
            hold.amount,
            extra={"job_id": job_id, "hold": hold.amount, "charged": credits},
        )
    balance_after = session.execute(
        _POST_CHARGE, {"p_account": hold.account_id, "p_cost": credits, "p_hold": hold.amount}
    ).scalar_one()
    now = utcnow()
    metadata = {"hold": hold.amount, "estimate_miss": charge.estimate_miss}
    session.execute(
        _INSERT_TRANSACTION,
        {
            "account_id": hold.account_id,
            "type": "deduction",
            "amount": -credits,
            "balance_after": balance_after,
            "description": f"{usage.operation} on {usage.model}",
            "job_id": job_id,
            "reference": None,
            "metadata": metadata,
            "created_at": now,
        },
    )
    session.execute(
        _INSERT_USAGE,
        {
            "account_id": hold.account_id,
            "job_id": job_id,
            "site_id": usage.site_id,
            "operation": usage.operation,
            "model": usage.model,
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
            "images": usage.images,
            "credits": credits,
            "cost_usd": charge.cost_usd,
            "items_created": usage.items_created,
            "created_at": now,
        },
    )
    return Posting(amount=-credits, balance_after=balance_after, metadata=metadata)


def release(session: Session, job_id: str, *, expired: bool = False) -> int:
    """Give a hold back (job failed, cancelled or expired). Returns credits released."""
    hold = _close_hold(session, job_id, "expired" if expired else "released")
    if hold is None:
        return 0
    session.execute(_UNRESERVE, {"p_account": hold.account_id, "p_hold": hold.amount})
    return int(hold.amount)


def grant(
    session: Session,
    account_id: str,
    amount: int,
    type_: str,
    description: str,
    *,
    reference: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> CreditTransaction:
    """Post credits in (or out, for a negative admin adjustment) with a transaction row.

    A negative amount may not take the balance below what open holds need.
    `reference` makes the grant once-only (a bank reference, a renewal period).
    """
    if type_ not in GRANT_TYPES:
        raise ValueError(f"unknown grant type {type_!r}")
    if amount == 0:
        raise ValueError("a grant must move credits")
    if reference is not None and session.scalar(
        select(CreditTransaction.id).where(
            CreditTransaction.account_id == account_id,
            CreditTransaction.type == type_,
            CreditTransaction.reference == reference,
        )
    ):
        raise DuplicateReference(
            f"Reference {reference!r} was already applied to this account.", reference=reference
        )
    balance_after = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.credits + amount >= Account.reserved_credits)
        .values(credits=Account.credits + amount)
        .returning(Account.credits)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if balance_after is None:
        row = session.execute(
            select(Account.credits, Account.reserved_credits).where(Account.id == account_id)
        ).one_or_none()
        if row is None:
            raise NotFound("Account not found.")
        raise InsufficientCredits(required=-amount, available=row.credits - row.reserved_credits)
    transaction = CreditTransaction(
        account_id=account_id,
        type=type_,
        amount=amount,
        balance_after=balance_after,
        description=description,
        reference=reference,
        metadata_=metadata or {},
    )
    session.add(transaction)
    session.flush()
    return transaction


def expired_hold_job_ids(session: Session, now: datetime, limit: int = 500) -> list[str]:
    return list(
        session.scalars(
            select(CreditReservation.job_id)
            .where(CreditReservation.status == "held", CreditReservation.expires_at < now)
            .order_by(CreditReservation.expires_at)
            .limit(limit)
        )
    )


def list_transactions(
    session: Session, account_id: str, *, before_id: int | None, limit: int
) -> tuple[list[CreditTransaction], int | None]:
    """Newest first; returns the page and the id to continue before, if any."""
    query = select(CreditTransaction).where(CreditTransaction.account_id == account_id)
    if before_id is not None:
        query = query.where(CreditTransaction.id < before_id)
    rows = list(session.scalars(query.order_by(CreditTransaction.id.desc()).limit(limit + 1)))
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


def transaction_view(txn: CreditTransaction) -> dict[str, Any]:
    return {
        "id": txn.id,
        "type": txn.type,
        "amount": txn.amount,
        "balance_after": txn.balance_after,
        "description": txn.description,
        "job_id": txn.job_id,
        "reference": txn.reference,
        "metadata": txn.metadata_,
        "created_at": as_utc(txn.created_at).isoformat(),
    }
