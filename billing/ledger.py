"""The credit ledger: reserve -> settle | release | expire, and grants.

Every balance change is one conditional UPDATE checked by its row count (no
read-modify-write in Python, no lock held across a provider call). Every function
takes the caller's session and never commits: the caller's transaction makes the
hold, the job row and the ledger rows appear together or not at all.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Insert,
    Table,
    bindparam,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from billing.errors import (
    AccountInactive,
    BillingError,
    DuplicateReference,
    InsufficientCredits,
    NotFound,
)
from billing.paging import Page, decode_int_cursor, encode_cursor, page_of, page_size
from billing.pricing import Charge
from models import (
    Account,
    AutomationRun,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    Job,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)

# Statuses that may spend credits (DESIGN.md: the reserve UPDATE's WHERE clause).
SPENDING_STATUSES = ("trial", "active", "pending_payment")
GRANT_TYPES = ("registration", "renewal", "topup", "bank_transfer", "subscription", "adjustment")
# Grants for a payment or a period: once-only, so never without their reference.
REFERENCED_GRANTS = ("renewal", "topup", "bank_transfer", "subscription")


@dataclass(frozen=True)
class UsageRecord:
    operation: str
    model: str
    tokens_in: int
    tokens_out: int
    images: int
    site_id: str | None
    items_created: int
    # The job's final status: usage is billed whatever it is.
    outcome: str = "succeeded"


@dataclass(frozen=True)
class Posting:
    """A posted deduction, as settle wrote it (plain values: the hot path skips the ORM)."""

    amount: int
    balance_after: int
    metadata: dict[str, Any]


# The hot path (reserve, settle, release) runs prebuilt Core statements with bound
# parameters on the session's connection: no ORM flush, no statement building per call.
# PostgreSQL runs each step as one statement (data-modifying CTEs): one round trip, and
# the account row stays locked for the shortest time. SQLite cannot modify data in a
# CTE, but it runs in-process, so the same steps as separate statements cost no trips.
# Both paths take the same parameters and are exercised by every ledger test on both.
_accounts = cast(Table, Account.__table__)
_holds = cast(Table, CreditReservation.__table__)
_transactions = cast(Table, CreditTransaction.__table__)
_usage_logs = cast(Table, CreditUsageLog.__table__)


def _param(name: str, column: Column[Any]) -> BindParameter[Any]:
    return bindparam(name, type_=column.type)


_p_account = _param("p_account", _accounts.c.id)
_p_job = _param("p_job", _holds.c.job_id)
_p_amount = _param("p_amount", _holds.c.amount)
_p_now = _param("p_now", _holds.c.created_at)

_RESERVE = (
    update(_accounts)
    .where(
        _accounts.c.id == _p_account,
        _accounts.c.credits - _accounts.c.reserved_credits >= _p_amount,
        _accounts.c.status.in_(SPENDING_STATUSES),
    )
    .values(reserved_credits=_accounts.c.reserved_credits + _p_amount)
)
_HOLD_COLUMNS = ("account_id", "job_id", "amount", "status", "expires_at", "created_at")
_HOLD_VALUES = (
    _p_job,
    _p_amount,
    literal("held"),
    _param("p_expires", _holds.c.expires_at),
    _p_now,
)
_INSERT_HOLD = insert(_holds).values(
    dict(zip(_HOLD_COLUMNS, (_p_account, *_HOLD_VALUES), strict=True))
)
_reserved = _RESERVE.returning(_accounts.c.id).cte("reserved")
_PG_RESERVE = (
    insert(_holds)
    .from_select(_HOLD_COLUMNS, select(_reserved.c.id, *_HOLD_VALUES))
    .returning(_holds.c.id)
)

_CLOSE_HOLD = (
    update(_holds)
    .where(_holds.c.job_id == _p_job, _holds.c.status == "held")
    .values(status=_param("p_status", _holds.c.status), resolved_at=_p_now)
    .returning(_holds.c.account_id, _holds.c.amount)
)
_p_charged = _param("p_charged", _accounts.c.credits)
_POST_CHARGE = (
    update(_accounts)
    .where(_accounts.c.id == _p_account)
    .values(
        credits=_accounts.c.credits - _p_charged,
        reserved_credits=_accounts.c.reserved_credits - _p_amount,
    )
    .returning(_accounts.c.credits)
)
_UNRESERVE = (
    update(_accounts)
    .where(_accounts.c.id == _p_account)
    .values(reserved_credits=_accounts.c.reserved_credits - _p_amount)
)
_DEDUCTION_COLUMNS = (
    "account_id", "type", "amount", "balance_after", "description", "job_id", "metadata",
    "created_at",
)  # fmt: skip
_p_description = _param("p_description", _transactions.c.description)
_INSERT_DEDUCTION = insert(_transactions).values(
    dict(
        zip(
            _DEDUCTION_COLUMNS,
            (
                _p_account, literal("deduction"), -_p_charged,
                _param("p_balance_after", _transactions.c.balance_after), _p_description, _p_job,
                _param("p_metadata", _transactions.c.metadata), _p_now,
            ),
            strict=True,
        )
    )
)  # fmt: skip
_USAGE_COLUMNS = (
    "account_id", "job_id", "site_id", "operation", "model", "tokens_in", "tokens_out",
    "images", "outcome", "credits", "cost_usd", "items_created", "created_at", "automation_id",
)  # fmt: skip
_USAGE_FIELDS = ("site_id", "operation", "model", "tokens_in", "tokens_out", "images", "outcome")
_USAGE_VALUES = tuple(_param(f"p_{name}", _usage_logs.c[name]) for name in _USAGE_FIELDS)
_p_cost_usd = _param("p_cost_usd", _usage_logs.c.cost_usd)
_p_items = _param("p_items_created", _usage_logs.c.items_created)
# The job's automation run (or NULL), copied onto its usage log in the same statement, so
# usage analytics split manual from automated spending without joining jobs.
_jobs = cast(Table, Job.__table__)
_JOB_AUTOMATION = select(_jobs.c.automation_id).where(_jobs.c.id == _p_job).scalar_subquery()
_INSERT_USAGE = insert(_usage_logs).values(
    dict(
        zip(
            _USAGE_COLUMNS,
            (
                _p_account,
                _p_job,
                *_USAGE_VALUES,
                _p_charged,
                _p_cost_usd,
                _p_items,
                _p_now,
                _JOB_AUTOMATION,
            ),
            strict=True,
        )
    )
)

# PostgreSQL settle: close the hold, post the charge (capped at the hold), write the
# deduction and the usage log, return what was posted; nothing at all if the hold was
# not open. Under READ COMMITTED a concurrent second settle waits on the hold row, then
# re-checks `status = 'held'` and finds it closed.
_closed = _CLOSE_HOLD.cte("closed")
_charged = func.least(_p_charged, _closed.c.amount)
_posted = (
    update(_accounts)
    .where(_accounts.c.id == _closed.c.account_id)
    .values(
        credits=_accounts.c.credits - _charged,
        reserved_credits=_accounts.c.reserved_credits - _closed.c.amount,
    )
    .returning(
        _accounts.c.id.label("account_id"),
        _closed.c.amount.label("hold"),
        _charged.label("charged"),
        _accounts.c.credits.label("balance_after"),
    )
    .cte("posted")
)
_pg_deduction = insert(_transactions).from_select(
    _DEDUCTION_COLUMNS,
    select(
        _posted.c.account_id, literal("deduction"), -_posted.c.charged, _posted.c.balance_after,
        _p_description, _p_job,
        func.json_build_object(
            "hold", _posted.c.hold, "estimate_miss", bindparam("p_miss", type_=Boolean)
        ),
        _p_now,
    ),
).cte("deduction")  # fmt: skip
_pg_usage = insert(_usage_logs).from_select(
    _USAGE_COLUMNS,
    select(
        _posted.c.account_id, _p_job, *_USAGE_VALUES, _posted.c.charged, _p_cost_usd, _p_items,
        _p_now, _JOB_AUTOMATION,
    ),
).cte("usage")  # fmt: skip
_PG_SETTLE = select(
    _posted.c.account_id, _posted.c.hold, _posted.c.charged, _posted.c.balance_after
).add_cte(_pg_deduction, _pg_usage)
_released = _CLOSE_HOLD.cte("released")
_PG_RELEASE = (
    update(_accounts)
    .where(_accounts.c.id == _released.c.account_id)
    .values(reserved_credits=_accounts.c.reserved_credits - _released.c.amount)
    .returning(_released.c.amount)
)


def _on_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def _hold_params(account_id: str, job_id: str, amount: int, ttl: timedelta) -> dict[str, Any]:
    now = utcnow()
    return {
        "p_account": account_id,
        "p_job": job_id,
        "p_amount": amount,
        "p_expires": now + ttl,
        "p_now": now,
    }


def reserve(session: Session, account_id: str, job_id: str, amount: int, ttl: timedelta) -> None:
    """Hold `amount` credits for a job, or raise without writing anything."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    connection = session.connection()
    params = _hold_params(account_id, job_id, amount, ttl)
    if _on_postgresql(connection):
        held = connection.execute(_PG_RESERVE, params).first() is not None
    else:
        held = connection.execute(_RESERVE, params).rowcount == 1
        if held:
            connection.execute(_INSERT_HOLD, params)
    if not held:
        raise _refusal(session, account_id, amount)


def reserve_new_job(session: Session, job: dict[str, Any], amount: int, ttl: timedelta) -> None:
    """Insert a new job's row (`job`: its columns) and hold `amount` credits for it, or
    raise having written neither. On PostgreSQL it is one statement: the job's INSERT
    rides on the reserve's CTE and happens only if the reserve does (a round trip less
    per submission, bench.admission_cpu); on SQLite the INSERT, then `reserve`."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    connection = session.connection()
    if not _on_postgresql(connection):
        connection.execute(INSERT_JOB, job)
        reserve(session, job["account_id"], job["id"], amount, ttl)
        return
    params = {f"job_{name}": value for name, value in job.items()}
    params.update(_hold_params(job["account_id"], job["id"], amount, ttl))
    if connection.execute(_pg_reserve_new_job(tuple(job)), params).first() is None:
        raise _refusal(session, job["account_id"], amount)


_jobs = cast(Table, Job.__table__)
# A job row exactly as its columns dict says (one Core INSERT, no unit of work); also
# `submission`'s keyed path, which needs its own savepoint around it.
INSERT_JOB = insert(_jobs)


@functools.cache
def _pg_reserve_new_job(columns: tuple[str, ...]) -> Insert:
    """`_PG_RESERVE` with the job's INSERT as a CTE on the reserve's: the hold selects
    from both, so the job row exists exactly when the hold does (the hold's foreign key
    to it is checked at the statement's end). Built once per column set."""
    reserved = _RESERVE.returning(_accounts.c.id).cte("reserved")
    values = [bindparam(f"job_{name}", type_=_jobs.c[name].type) for name in columns]
    new_job = (
        insert(_jobs)
        .from_select(columns, select(*values).select_from(reserved))
        .returning(_jobs.c.id)
        .cte("new_job")
    )
    return (
        insert(_holds)
        .from_select(
            _HOLD_COLUMNS,
            select(reserved.c.id, *_HOLD_VALUES).select_from(reserved.join(new_job, true())),
        )
        .returning(_holds.c.id)
    )


def _refusal(
    session: Session, account_id: str, amount: int, what: str = "This job"
) -> BillingError:
    row = session.execute(
        select(Account.status, Account.credits, Account.reserved_credits).where(
            Account.id == account_id
        )
    ).one_or_none()
    if row is None:
        return NotFound("Account not found.")
    if row.status not in SPENDING_STATUSES:
        return AccountInactive(row.status)
    available = max(row.credits - row.reserved_credits, 0)
    return InsufficientCredits(
        required=amount,
        available=available,
        message=f"{what} needs up to {amount} credits but only {available} are available.",
    )


# An automation run holds its whole worst case once (`reserve_run`); each of its jobs'
# holds is then carved from that pool (`carve`), so the account's `reserved_credits` does
# not move until a job settles or releases its own hold, and the pool's remainder is
# released when the run ends (`release_run`). reserved == sum of open job holds + pools.
_runs = cast(Table, AutomationRun.__table__)
_p_run = _param("p_run", _runs.c.id)
_FILL_POOL = (
    update(_runs)
    .where(_runs.c.id == _p_run, _runs.c.held_credits == 0, _runs.c.released_credits == 0)
    .values(held_credits=_p_amount)
)
_TAKE_FROM_POOL = (
    update(_runs)
    .where(_runs.c.id == _p_run, _runs.c.held_credits >= _p_amount)
    .values(held_credits=_runs.c.held_credits - _p_amount)
)
_INSERT_CARVED_HOLD = insert(_holds).values(
    {**dict(zip(_HOLD_COLUMNS, (_p_account, *_HOLD_VALUES), strict=True)), "automation_id": _p_run}
)
_EMPTY_POOL = (
    update(_runs)
    .where(_runs.c.id == _p_run, _runs.c.held_credits == _p_amount)
    .values(held_credits=0, released_credits=_runs.c.released_credits + _p_amount)
)


def reserve_run(session: Session, account_id: str, run_id: str, amount: int) -> None:
    """Hold a whole automation run's worst case from the account, as its pool; or raise
    (402 with `required` and `available`) without writing anything."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    connection = session.connection()
    params = {"p_account": account_id, "p_run": run_id, "p_amount": amount}
    if connection.execute(_RESERVE, params).rowcount != 1:
        raise _refusal(session, account_id, amount, what="This automation run")
    if connection.execute(_FILL_POOL, params).rowcount != 1:
        raise RuntimeError(f"automation run {run_id} already has a hold")


def carve(
    session: Session, run_id: str, account_id: str, job_id: str, amount: int, ttl: timedelta
) -> bool:
    """Move `amount` of a run's pool into a hold of one of its jobs (no second
    reservation against the balance); False, writing nothing, if the pool is short."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    connection = session.connection()
    params = _hold_params(account_id, job_id, amount, ttl) | {"p_run": run_id}
    if connection.execute(_TAKE_FROM_POOL, params).rowcount != 1:
        return False
    connection.execute(_INSERT_CARVED_HOLD, params)
    return True


def release_run(session: Session, run_id: str) -> int:
    """Give back what is left of a run's pool (the run ended); the credits released.
    The caller holds the run row's lock, so the pool read here is the one emptied."""
    connection = session.connection()
    row = connection.execute(
        select(_runs.c.account_id, _runs.c.held_credits).where(_runs.c.id == run_id)
    ).one()
    params = {"p_run": run_id, "p_account": row.account_id, "p_amount": row.held_credits}
    if row.held_credits == 0 or connection.execute(_EMPTY_POOL, params).rowcount != 1:
        return 0
    connection.execute(_UNRESERVE, params)
    return int(row.held_credits)


def _settle_params(job_id: str, charge: Charge, usage: UsageRecord) -> dict[str, Any]:
    return {
        "p_job": job_id,
        "p_status": "settled",
        "p_now": utcnow(),
        "p_charged": charge.credits,
        "p_miss": charge.estimate_miss,
        "p_description": f"{usage.operation} on {usage.model}",
        "p_site_id": usage.site_id,
        "p_operation": usage.operation,
        "p_model": usage.model,
        "p_tokens_in": usage.tokens_in,
        "p_tokens_out": usage.tokens_out,
        "p_images": usage.images,
        "p_outcome": usage.outcome,
        "p_cost_usd": charge.cost_usd,
        "p_items_created": usage.items_created,
    }


def _post(
    connection: Connection, params: dict[str, Any], balance_after: int, metadata: dict[str, Any]
) -> None:
    """The deduction and the usage log of a charge already taken from the account."""
    params |= {"p_balance_after": balance_after, "p_metadata": metadata}
    connection.execute(_INSERT_DEDUCTION, params)
    connection.execute(_INSERT_USAGE, params)


def settle(session: Session, job_id: str, charge: Charge, usage: UsageRecord) -> Posting | None:
    """Post the actual cost of a held job; None if the hold was already resolved.

    The held -> settled transition is the gate: a redelivered task finds it closed
    and changes nothing. The unique indexes on the deduction and usage log back it.
    """
    connection = session.connection()
    params = _settle_params(job_id, charge, usage)
    if _on_postgresql(connection):
        posted = connection.execute(_PG_SETTLE, params).one_or_none()
        if posted is None:
            return None
        hold, charged, balance_after = posted.hold, posted.charged, posted.balance_after
    else:
        closed = connection.execute(_CLOSE_HOLD, params).one_or_none()
        if closed is None:
            return None
        hold, charged = closed.amount, min(charge.credits, closed.amount)
        params |= {"p_account": closed.account_id, "p_amount": hold, "p_charged": charged}
        balance_after = connection.execute(_POST_CHARGE, params).scalar_one()
        metadata = {"hold": hold, "estimate_miss": charge.estimate_miss}
        _post(connection, params, balance_after, metadata)
    if charge.estimate_miss:
        log.warning(
            "estimate miss on job %s: actual cost %s exceeded the hold of %s; charged the hold",
            job_id,
            charge.credits,
            hold,
            extra={"job_id": job_id, "hold": hold, "cost": charge.credits, "charged": charged},
        )
    return Posting(
        amount=-charged,
        balance_after=balance_after,
        metadata={"hold": hold, "estimate_miss": charge.estimate_miss},
    )


_SETTLE_EXPIRED = (
    update(_holds)
    .where(_holds.c.job_id == _p_job, _holds.c.status == "expired")
    .values(status="settled", resolved_at=_p_now)
    .returning(_holds.c.account_id, _holds.c.amount)
)
_LATE_CHARGE = (
    update(_accounts)
    .where(
        _accounts.c.id == _p_account,
        _accounts.c.credits - _accounts.c.reserved_credits >= _p_charged,
    )
    .values(credits=_accounts.c.credits - _p_charged)
    .returning(_accounts.c.credits)
)


def settle_late(
    session: Session, job_id: str, charge: Charge, usage: UsageRecord
) -> Posting | None:
    """Charge an answer that arrived after its job's hold expired: a charge without a
    hold, only from credits still available (capped at the old hold). None, with nothing
    written, when the hold was not expired or the account cannot cover it.

    `expired -> settled` is the gate, as `held -> settled` is for `settle`.
    """
    params = _settle_params(job_id, charge, usage)
    with session.begin_nested() as savepoint:
        connection = session.connection()  # inside the savepoint, so it is emitted
        closed = connection.execute(_SETTLE_EXPIRED, params).one_or_none()
        if closed is None:
            return None
        hold, charged = closed.amount, min(charge.credits, closed.amount)
        params |= {"p_account": closed.account_id, "p_charged": charged}
        balance_after = connection.execute(_LATE_CHARGE, params).scalar_one_or_none()
        if balance_after is None:
            savepoint.rollback()
            return None
        metadata = {"hold": hold, "estimate_miss": charge.estimate_miss, "late": True}
        _post(connection, params, balance_after, metadata)
    return Posting(amount=-charged, balance_after=balance_after, metadata=metadata)


def release(session: Session, job_id: str, *, expired: bool = False) -> int:
    """Give a hold back (job failed, cancelled or expired). Returns credits released."""
    connection = session.connection()
    params = {"p_job": job_id, "p_status": "expired" if expired else "released", "p_now": utcnow()}
    if _on_postgresql(connection):
        return int(connection.execute(_PG_RELEASE, params).scalar_one_or_none() or 0)
    closed = connection.execute(_CLOSE_HOLD, params).one_or_none()
    if closed is None:
        return 0
    connection.execute(
        _UNRESERVE, params | {"p_account": closed.account_id, "p_amount": closed.amount}
    )
    return int(closed.amount)


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
    `reference` makes the grant once-only (a bank reference, a renewal period); a payment
    or a period's grant must have one. Of two racing the same reference, the loser gets
    `DuplicateReference` (the unique index decides; nothing of it is left behind).
    """
    if type_ not in GRANT_TYPES:
        raise ValueError(f"unknown grant type {type_!r}")
    if amount == 0:
        raise ValueError("a grant must move credits")
    if amount < 0 and type_ != "adjustment":
        raise ValueError(f"a {type_} grant adds credits; only an adjustment takes them back")
    if reference is None and type_ in REFERENCED_GRANTS:
        raise ValueError(f"a {type_} grant is once-only: it needs its reference")
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
    if reference is None:
        return _post_grant(session, account_id, amount, type_, description, None, metadata)
    try:
        with session.begin_nested():
            return _post_grant(session, account_id, amount, type_, description, reference, metadata)
    except IntegrityError:  # a racer committed the same reference after our check
        raise DuplicateReference(
            f"Reference {reference!r} was already applied to this account.", reference=reference
        ) from None


def _post_grant(
    session: Session,
    account_id: str,
    amount: int,
    type_: str,
    description: str,
    reference: str | None,
    metadata: dict[str, Any] | None,
) -> CreditTransaction:
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
        available = row.credits - row.reserved_credits
        raise InsufficientCredits(
            required=-amount,
            available=available,
            message=f"Cannot take back {-amount} credits: only {available} are available "
            "(the rest is spent or held by unfinished jobs).",
        )
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


def list_transactions(
    session: Session, account_id: str, *, cursor: str | None, limit: int
) -> Page[CreditTransaction]:
    """Newest first."""
    limit = page_size(limit)
    query = select(CreditTransaction).where(CreditTransaction.account_id == account_id)
    if cursor:
        query = query.where(CreditTransaction.id < decode_int_cursor(cursor))
    rows = session.scalars(query.order_by(CreditTransaction.id.desc()).limit(limit + 1)).all()
    return page_of(rows, limit, lambda txn: encode_cursor(str(txn.id)))


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
