"""The hard limits in billing: an addition is held to the plans as they are under the
account lock, and a refunded Ahrefs query goes back to the period that counted it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from billing import lifecycle, limits, sites, subscriptions
from billing.errors import LimitReached
from models import Account, Site, utcnow
from models.db import session_factory, transaction
from tests.factories import make_account


def _on_growth_with_one_site() -> str:
    with transaction() as session:
        account_id = make_account(session, "growth").id
        session.add(Site(account_id=account_id, name="first"))
        return account_id


def test_an_addition_is_held_to_a_downgrade_committed_after_its_caller_was_read(
    db_url: str,
) -> None:
    """A request reads its caller (the auth read), an owner's downgrade to Free commits,
    then the request adds a site: the plans counted are the ones under the lock."""
    account_id = _on_growth_with_one_site()
    with session_factory()() as request:
        with request.begin():
            caller = request.get(Account, account_id)
            assert caller is not None
            assert caller.scheduled_plan is None
        with transaction() as session:
            owner = session.get(Account, account_id)
            assert owner is not None
            subscriptions.request_change(session, owner, "free", utcnow())
        with request.begin(), pytest.raises(LimitReached) as refused:
            sites.create_site(request, caller, "second", None)

    assert "Free plan you move to" in refused.value.message
    with transaction() as session:
        count = select(func.count()).select_from(Site).where(Site.account_id == account_id)
        assert session.scalar(count) == 1


def _counted(account_id: str) -> limits.AhrefsQuery:
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        return limits.consume_ahrefs_query(session, account)


def _usage(account_id: str) -> int:
    with transaction() as session:
        used = session.scalar(select(Account.usage_ahrefs_queries).where(Account.id == account_id))
        assert used is not None
        return used


def _in_a_period(account_id: str, start: datetime, end: datetime) -> None:
    with transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(period_start=start, period_end=end)
        )


def test_a_failed_query_is_refunded_in_its_period(db_url: str) -> None:
    with transaction() as session:
        account_id = make_account(session, "starter").id
    _in_a_period(account_id, datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC))
    counted = _counted(account_id)
    assert (counted.used, _usage(account_id)) == (1, 1)

    with transaction() as session:
        assert limits.refund_ahrefs_query(session, account_id, counted) is True

    assert _usage(account_id) == 0


def test_a_refund_after_the_rollover_does_not_reach_the_next_period(db_url: str) -> None:
    """Counted in January, failed after the February rollover reset the count: February's
    query stays counted."""
    with transaction() as session:
        account_id = make_account(session, "starter").id
    _in_a_period(account_id, datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC))
    january = _counted(account_id)
    with transaction() as session:
        lifecycle.roll_over_periods(session, datetime(2027, 2, 1, 0, 1, tzinfo=UTC))
    _counted(account_id)  # February's first query
    assert _usage(account_id) == 1

    with transaction() as session:
        assert limits.refund_ahrefs_query(session, account_id, january) is False

    assert _usage(account_id) == 1


def test_the_limit_message_promises_the_rollover_once_the_month_has_ended(db_url: str) -> None:
    """Between a period's end and the rollover that resets the count, the reset date is
    already past: the message says the rollover is coming, not a day gone by."""
    with transaction() as session:
        account_id = make_account(session, "starter").id
        limit = limits.plan_limit(session.get(Account, account_id).plan, "ahrefs_queries")
        assert limit
    now = utcnow()
    _in_a_period(account_id, now - timedelta(days=10), now + timedelta(days=21))
    for _ in range(limit):
        _counted(account_id)
    with pytest.raises(LimitReached) as upcoming:
        _counted(account_id)
    assert f"reset on {(now + timedelta(days=21)).date()}." in upcoming.value.message

    _in_a_period(account_id, now - timedelta(days=31), now - timedelta(minutes=20))
    with pytest.raises(LimitReached) as ended:
        _counted(account_id)

    assert "reset on" not in ended.value.message
    assert f"Your month ended on {(now - timedelta(minutes=20)).date()}" in ended.value.message
    assert "next rollover" in ended.value.message
