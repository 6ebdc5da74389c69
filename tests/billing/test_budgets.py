"""Budgets in billing: counted against the values committed when the account is locked,
and a late charge (its hold expired, its share given back) held to them too."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from billing import budgets, runs
from billing.errors import BudgetExceeded
from billing.pricing import Usage
from billing.runs import complete_job, start_job
from billing.submission import JobRequest, submit_job
from models import Account, UnbilledUsage, utcnow
from models.db import session_factory, transaction
from tests.factories import HOLD_TTL, make_account

CLUSTER = JobRequest("clustering", {"keywords": ["running shoes", "trail shoes"]})


def test_a_budget_set_after_the_caller_was_read_is_enforced(db_url: str) -> None:
    """The API reads the caller before the budget check locks the row; a budget an owner
    lowered in between is the one counted."""
    with transaction(db_url) as session:
        account_id = make_account(session, "growth", credits=100_000).id
        budgets.set_budget(session, session.get(Account, account_id), 1_000, None)
    request = session_factory(db_url)()
    caller = request.get(Account, account_id)  # require_key's read
    request.commit()
    with transaction(db_url) as session:  # the owner's PUT /v1/account/budget
        budgets.set_budget(session, session.get(Account, account_id), 1, None)

    with request.begin(), pytest.raises(BudgetExceeded) as refused:
        submit_job(request, caller, CLUSTER, HOLD_TTL)
    request.close()

    assert refused.value.details["limit"] == 1


def test_a_late_charge_is_held_to_the_budget_its_expired_hold_gave_back(db_url: str) -> None:
    """The first job's hold expires (its worker looked dead) and its share of the budget
    goes to a second job; the first job's answer comes after all: charging it would take
    spending past the budget, so it is recorded as unbilled instead."""
    with transaction(db_url) as session:
        account = make_account(session, "growth", credits=100_000)
        account_id = account.id
        first = submit_job(session, account, CLUSTER, HOLD_TTL).job
        first_id, hold = first.id, first.reserved_credits
        budgets.set_budget(session, account, hold, None)  # room for one hold exactly
    with transaction(db_url) as session:
        run = start_job(session, first_id)
        assert run is not None
    with transaction(db_url) as session:
        swept = runs.sweep_expired_holds(
            session, utcnow() + timedelta(hours=3), HOLD_TTL, timedelta(hours=24)
        )
        assert swept.job_ids == [first_id]
    with transaction(db_url) as session:
        second = submit_job(session, session.get(Account, account_id), CLUSTER, HOLD_TTL).job
        assert second.reserved_credits == hold

    with transaction(db_url) as session:
        late = complete_job(session, run, Usage(300, 200), {"clusters": []}, [])

    assert not late
    with transaction(db_url) as session:
        view = budgets.budget_view(session, session.get(Account, account_id))
        assert view["used"]["monthly"] <= hold
        unbilled = session.scalars(
            select(UnbilledUsage).where(UnbilledUsage.job_id == first_id)
        ).one()
        assert unbilled.reason == "expired_uncovered"
