"""Owner plan changes in billing: a downgrade counts what the account holds under the
account lock, so an addition racing it cannot leave the account over the plan it moves
to; an account on a retired plan can leave it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, update

from billing import sites, subscriptions
from billing.errors import PlanTooSmall
from models import Account, Plan, Site, utcnow
from models.db import transaction
from tests.factories import make_account


def test_a_downgrade_counts_a_site_added_while_it_waited_for_the_lock(db_url: str) -> None:
    """Growth, one site. Request B adds a second site (it holds the account lock) while
    request A asks to move to Free (one site): A waits for B, then counts two sites."""
    with transaction() as session:
        account_id = make_account(session, "growth").id
        session.add(Site(account_id=account_id, name="first"))
    added, release = threading.Event(), threading.Event()

    def add_site() -> None:
        with transaction() as session:
            account = session.get(Account, account_id)
            assert account is not None
            sites.create_site(session, account, "second", None)
            added.set()
            release.wait(30)

    def downgrade() -> str:
        assert added.wait(30)
        try:
            with transaction() as session:
                account = session.get(Account, account_id)
                assert account is not None
                subscriptions.request_change(session, account, "free", utcnow())
        except PlanTooSmall:
            return "refused"
        return "scheduled"

    with ThreadPoolExecutor(2) as pool:
        adding, asking = pool.submit(add_site), pool.submit(downgrade)
        assert added.wait(30)
        time.sleep(0.5)  # A reaches the lock (unlocked, it would count one site and pass)
        release.set()
        adding.result(30)
        outcome = asking.result(30)

    assert outcome == "refused"
    with transaction() as session:
        count = select(func.count()).select_from(Site).where(Site.account_id == account_id)
        assert session.scalar(count) == 2
        assert (
            session.scalar(select(Account.scheduled_plan_id).where(Account.id == account_id))
            is None
        )


@pytest.mark.usefixtures("db_url")
@pytest.mark.parametrize(("slug", "kind"), [("free", "downgrade"), ("starter", "upgrade")])
def test_an_account_leaves_a_retired_plan(slug: str, kind: str) -> None:
    """No waiting for the period end on a plan no longer offered: a free plan now, a paid
    one when its purchase is paid."""
    with transaction() as session:
        account_id = make_account(session, "growth").id
        session.execute(update(Plan).where(Plan.slug == "growth").values(is_active=False))
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        change = subscriptions.request_change(session, account, slug, utcnow())

    assert change.kind == kind
    with transaction() as session:
        account = session.get(Account, account_id)
        assert account is not None
        assert account.plan is not None
        if slug == "free":
            assert (account.plan.slug, change.purchase) == ("free", None)
        else:
            assert change.purchase is not None
            assert (change.purchase.status, account.plan.slug) == ("pending", "growth")
