"""Admin adjustments with an Idempotency-Key: posted once, under concurrency too."""

from __future__ import annotations

import threading

from billing.audit import audit
from billing.credits import adjust
from models.db import transaction
from tests.factories import balances, make_account


def test_concurrent_retries_of_one_keyed_adjustment_post_it_once(db_url: str) -> None:
    """A client that retries on a timeout can have its attempts in flight together: the
    unique reference refuses the second insert, and the loser answers as a replay."""
    with transaction(db_url) as session:
        account_id = make_account(session, credits=1000).id
    racers = 8
    barrier = threading.Barrier(racers)
    posted: list[bool] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            barrier.wait(30)
            with transaction(db_url) as session:
                posted.append(adjust(session, account_id, 250, "goodwill", "ticket-7"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(posted) == [False] * (racers - 1) + [True]
    with transaction(db_url) as session:
        assert balances(session, account_id) == (1250, 0)
        assert audit(session) == []
