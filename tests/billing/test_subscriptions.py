"""Owner plan changes in billing: a downgrade counts what the account holds under the
account lock, so an addition racing it cannot leave the account over the plan it moves
to; an account on a retired plan can leave it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, update

from billing import purchases, sites, subscriptions
from billing.audit import audit
from billing.errors import PlanTooSmall, PurchaseNotPending
from billing.limits import lock_account
from models import Account, Plan, Purchase, Site, utcnow
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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_payment_confirmed_while_a_plan_change_holds_the_account_does_not_deadlock(
    db_url: str,
) -> None:
    """A plan change locks the account, then fails its pending plan purchases; a
    confirmation of one of them took the purchase's row first, then waited for the
    account: PostgreSQL aborted one of the two (a 500). Both now take the account first:
    the confirmation waits, then finds the purchase superseded (409), nothing granted."""
    with transaction() as session:
        account = make_account(session, "starter", credits=0)
        scale = session.scalars(select(Plan).where(Plan.slug == "scale")).one()
        account_id, purchase_id = (
            account.id,
            purchases.create_subscription(session, account, scale).id,
        )
    locked = threading.Event()

    def change_plan() -> tuple[str, ...]:
        with transaction() as session:
            lock_account(session, account_id)  # request_change's first step
            locked.set()
            time.sleep(1.5)  # the confirmation reaches its lock meanwhile
            return purchases.supersede_plan_purchases(session, account_id, utcnow())

    def confirm() -> str:
        assert locked.wait(30)
        try:
            with transaction() as session:
                purchases.confirm(session, purchase_id, "manual", "BANK-DEADLOCK", utcnow())
        except PurchaseNotPending as exc:
            return exc.code
        return "granted"

    with ThreadPoolExecutor(2) as pool:
        changing, confirming = pool.submit(change_plan), pool.submit(confirm)
        changing.result(30)
        assert confirming.result(30) == "purchase_not_pending"

    with transaction() as session:
        purchase = session.get(Purchase, purchase_id)
        assert purchase is not None
        assert (purchase.status, purchase.failure_reason) == ("failed", "superseded")
        assert session.get(Account, account_id).credits == 0  # type: ignore[union-attr]
        assert audit(session) == []
