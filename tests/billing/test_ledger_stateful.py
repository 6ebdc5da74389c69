"""Stateful property test of the ledger: random sequences of grant / submit (reserve) /
complete (settle) / fail and cancel (release) / sweep (expire) / adjust / redeliver /
status changes, against a plain Python model of the balance, the holds and the
account's concurrency slots (the first `max_concurrent_jobs` open jobs in submission
order are dispatched: admission is FIFO per account).

After every step: `billing.audit.audit` finds nothing anywhere, and the database agrees
with the model. Each example opens its own account in `initialize`, so nothing depends
on what earlier examples left behind; `teardown` deletes the example's rows only to keep
the whole-database audit fast.

Examples: HYPOTHESIS_EXAMPLES (default 500; raise it for a deeper search) on SQLite, at most
50 on PostgreSQL.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select

from billing import accounts, ledger
from billing.admission import concurrency_limit
from billing.audit import audit
from billing.errors import AccountInactive, InsufficientCredits, ModelNotAllowed
from billing.job_views import get_job
from billing.pricing import Usage
from billing.runs import (
    JobRun,
    cancel_job,
    complete_job,
    fail_job,
    start_job,
    sweep_expired_holds,
)
from billing.submission import submit_job
from models import (
    Account,
    AIModelConfig,
    Base,
    CreditReservation,
    Job,
    as_utc,
    utcnow,
)
from models.db import transaction
from tests.factories import balances, hold_for, make_account, request

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "500"))
PG_EXAMPLES = min(EXAMPLES, 50)
SPENDING = ("trial", "active", "pending_payment")
STATUSES = (*SPENDING, "suspended", "cancelled")
KEYWORDS = ["running shoes", "trail running", "marathon plan", "best shoes for flat feet"]


@dataclass
class ModelJob:
    """What the model knows about one job."""

    job_id: str
    operation: str
    model: str
    job_input: dict[str, Any]
    hold: int
    expires_at: datetime
    state: str = "held"  # held | settled | released | expired
    started: bool = False
    charged: int = 0


class LedgerMachine(RuleBasedStateMachine):
    url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.account_id: str | None = None
        self.credits = 0
        self.status = "active"
        self.plan = "starter"
        self.jobs: dict[str, ModelJob] = {}
        self.epoch = utcnow()
        self.prices: dict[str, AIModelConfig] = {}
        self.cap = 0
        # The sweeps' clock only moves forward, as the real one does: a job a sweep admits
        # into a freed slot is dispatched at that sweep's time, so it can look dead only
        # to a later sweep.
        self.swept_at = self.epoch

    # --- model helpers ---------------------------------------------------------------

    @property
    def reserved(self) -> int:
        return sum(j.hold for j in self.jobs.values() if j.state == "held")

    # In submission order: job ids are random, so sorting them would make draws flaky.
    def held(self) -> list[str]:
        return [j for j, job in self.jobs.items() if job.state == "held"]

    def queued(self) -> list[str]:
        return [j for j, job in self.jobs.items() if job.state == "held" and not job.started]

    def dispatched(self) -> list[str]:
        """The jobs holding a slot: the oldest open ones, up to the plan's cap."""
        return self.held()[: self.cap]

    def resolved(self) -> list[str]:
        return [j for j, job in self.jobs.items() if job.state != "held"]

    def expected_charge(self, job: ModelJob, usage: Usage) -> int:
        price = self.prices[job.model]
        if price.model_type == "image":
            credits = max(1, usage.images * price.credits_per_image)
        else:
            tokens = usage.tokens_in + usage.tokens_out
            credits = max(1, math.ceil(tokens / price.tokens_per_credit))
        return min(credits, job.hold)

    # --- setup -----------------------------------------------------------------------

    @initialize(
        credits=st.integers(0, 3000),
        plan=st.sampled_from(["starter", "free-trial"]),
        status=st.sampled_from(["active", "trial"]),
    )
    def open_account(self, credits: int, plan: str, status: str) -> None:
        with transaction(self.url) as session:
            acct = make_account(session, plan_slug=plan, credits=credits, status=status)
            self.account_id = acct.id
            self.cap = concurrency_limit(session, acct.id)
            self.prices = {m.name: m for m in session.scalars(select(AIModelConfig))}
            for price in self.prices.values():
                session.expunge(price)
        self.credits, self.plan, self.status = credits, plan, status

    def teardown(self) -> None:
        """Delete this example's rows (children first), so the audit stays fast."""
        if self.account_id is None:
            return
        with transaction(self.url) as session:
            for table in reversed(Base.metadata.sorted_tables):
                if "account_id" in table.c:
                    session.execute(delete(table).where(table.c.account_id == self.account_id))
            session.execute(delete(Account).where(Account.id == self.account_id))

    # --- grants ----------------------------------------------------------------------

    @rule(amount=st.integers(1, 2000))
    def top_up(self, amount: int) -> None:
        with transaction(self.url) as session:
            posted = ledger.grant(session, self.account_id, amount, "adjustment", "top-up")
            assert posted.balance_after == self.credits + amount
        self.credits += amount

    @rule(amount=st.integers(-3000, 3000).filter(bool))
    def adjust(self, amount: int) -> None:
        allowed = self.credits + amount >= self.reserved
        refused: InsufficientCredits | None = None
        try:
            with transaction(self.url) as session:
                ledger.grant(session, self.account_id, amount, "adjustment", "admin")
        except InsufficientCredits as exc:
            refused = exc
        if refused is not None:
            assert not allowed, f"adjustment {amount} refused with {self.credits}/{self.reserved}"
            available = self.credits - self.reserved
            assert refused.details == {"required": -amount, "available": available}
        else:
            assert allowed, f"adjustment {amount} took credits below the holds"
            self.credits += amount

    @rule(status=st.sampled_from(STATUSES))
    def change_status(self, status: str) -> None:
        with transaction(self.url) as session:
            accounts.admin_update(session, self.account_id, status, None)
        self.status = status

    # --- submit (reserve) ------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["image", "text"]),
        count=st.integers(1, 10),
        keywords=st.lists(st.sampled_from(KEYWORDS), min_size=1, max_size=4),
        pick=st.integers(0, 2),
        ttl_minutes=st.integers(1, 120),
    )
    def submit(
        self, kind: str, count: int, keywords: list[str], pick: int, ttl_minutes: int
    ) -> None:
        if kind == "image":
            body = {"operation": "image_generation", "input": {"prompt": "a fox", "count": count}}
            model = [None, "dall-e-3", "gpt-image-1"][pick]
        else:
            body = {"operation": "clustering", "input": {"keywords": keywords}}
            model = [None, "gpt-4o", "gpt-4.1"][pick]
        job_request = request(body, model=model)
        forced = self.plan == "free-trial" and model is not None
        try:
            with transaction(self.url) as session:
                acct = session.get(Account, self.account_id)
                hold = None if forced else hold_for(session, acct, job_request)
                result = submit_job(session, acct, job_request, timedelta(minutes=ttl_minutes))
                job = result.job
                expires_at = as_utc(
                    session.scalar(
                        select(CreditReservation.expires_at).where(
                            CreditReservation.job_id == job.id
                        )
                    )
                )
                snapshot = ModelJob(
                    job.id,
                    job.operation,
                    job.model,
                    dict(job.input),
                    job.reserved_credits,
                    expires_at,
                )
        except ModelNotAllowed:
            assert forced
            return
        except AccountInactive:
            assert self.status not in SPENDING
            return
        except InsufficientCredits as exc:
            refused = exc
        else:
            refused = None
        if refused is not None:
            assert self.status in SPENDING
            assert hold is not None
            assert hold > self.credits - self.reserved
            assert refused.details == {"required": hold, "available": self.credits - self.reserved}
            return
        assert not forced
        assert self.status in SPENDING
        assert hold is not None
        assert hold <= self.credits - self.reserved
        assert snapshot.hold == hold
        if kind == "image":
            assert hold == count * self.prices[snapshot.model].credits_per_image
        if self.plan == "free-trial":
            assert snapshot.model in ("gpt-4o-mini", "hidream-full")
        self.jobs[snapshot.job_id] = snapshot

    # --- worker side: settle, release --------------------------------------------------

    @precondition(lambda self: bool(self.held()))
    @rule(
        data=st.data(),
        tokens_in=st.integers(0, 3000),
        tokens_out=st.integers(0, 3000),
    )
    def complete(self, data: st.DataObject, tokens_in: int, tokens_out: int) -> None:
        job = self.jobs[data.draw(st.sampled_from(self.dispatched()), label="job")]
        if job.operation == "image_generation":
            usage = Usage(images=data.draw(st.integers(1, job.job_input["count"]), label="images"))
        else:
            usage = Usage(tokens_in, tokens_out)
        with transaction(self.url) as session:
            run = start_job(session, job.job_id)
        assert run is not None
        assert run.hold == job.hold
        job.started = True
        with transaction(self.url) as session:
            assert complete_job(session, run, usage, {"ok": True}, [])
        job.charged = self.expected_charge(job, usage)
        job.state = "settled"
        self.credits -= job.charged
        with transaction(self.url) as session:
            assert session.get(Job, job.job_id).credits_charged == job.charged

    @precondition(lambda self: bool(self.held()))
    @rule(data=st.data(), started=st.booleans())
    def fail(self, data: st.DataObject, started: bool) -> None:
        candidates = self.dispatched() if started else self.held()
        job = self.jobs[data.draw(st.sampled_from(candidates), label="job")]
        if started:
            with transaction(self.url) as session:
                assert start_job(session, job.job_id) is not None
            job.started = True
        with transaction(self.url) as session:
            assert fail_job(session, job.job_id, "provider_unavailable", "down")
        job.state = "released"

    @precondition(lambda self: bool(self.queued()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job = self.jobs[data.draw(st.sampled_from(self.queued()), label="job")]
        with transaction(self.url) as session:
            cancel_job(session, self.account_id, job.job_id)
            assert get_job(session, self.account_id, job.job_id).status == "cancelled"
        job.state = "released"

    @precondition(lambda self: bool(self.resolved()))
    @rule(data=st.data(), as_failure=st.booleans())
    def redeliver(self, data: st.DataObject, as_failure: bool) -> None:
        """A late or duplicate task for a job that is already final charges once at most:
        an answer for a job whose hold expired is charged if the account can still cover
        it (a charge without a hold); anything else changes no balance."""
        job = self.jobs[data.draw(st.sampled_from(self.resolved()), label="job")]
        run = JobRun(
            job.job_id,
            self.account_id,
            None,
            job.operation,
            job.job_input,
            job.model,
            job.model,
            job.hold,
            2,
        )
        usage = Usage(1, 1, 1)
        charge = self.expected_charge(job, usage)
        late = not as_failure and job.state == "expired" and charge <= self.credits - self.reserved
        with transaction(self.url) as session:
            assert start_job(session, job.job_id) is None
            if as_failure:
                assert not fail_job(session, job.job_id, "late", "late")
            else:
                assert bool(complete_job(session, run, usage, {}, [])) == late
        if late:
            job.state, job.charged = "settled", charge
            self.credits -= charge

    @rule(minutes=st.integers(0, 180))
    def sweep(self, minutes: int) -> None:
        """Only dispatched jobs can look dead; a job waiting for a slot keeps its hold
        (with a zero hold TTL and maximum queue age, every dispatched job past its expiry
        is dead)."""
        later = self.swept_at + timedelta(seconds=1)
        now = self.swept_at = max(later, utcnow() + timedelta(minutes=minutes))
        expected = {j for j in self.dispatched() if self.jobs[j].expires_at < now}
        swept: set[str] = set()
        with transaction(self.url) as session:
            # Loop: the sweep works in batches, and other examples' holds may be due too.
            while batch := sweep_expired_holds(session, now, timedelta(0), timedelta(0)).job_ids:
                swept |= set(batch)
        assert swept & set(self.jobs) == expected
        for job_id in expected:
            self.jobs[job_id].state = "expired"

    # --- after every step ----------------------------------------------------------------

    @invariant()
    def books_balance_and_match_the_model(self) -> None:
        if self.account_id is None:
            return
        with transaction(self.url) as session:
            assert audit(session) == []
            assert balances(session, self.account_id) == (self.credits, self.reserved)
            holds = dict(
                session.execute(
                    select(CreditReservation.job_id, CreditReservation.status).where(
                        CreditReservation.account_id == self.account_id
                    )
                ).all()
            )
            assert holds == {j: job.state for j, job in self.jobs.items()}
            statuses = dict(
                session.execute(
                    select(Job.id, Job.status).where(Job.account_id == self.account_id)
                ).all()
            )
            dispatched = set(
                session.scalars(
                    select(Job.id).where(
                        Job.account_id == self.account_id,
                        Job.status.in_(("queued", "running")),
                        Job.dispatched_at.is_not(None),
                    )
                )
            )
        assert dispatched == set(self.dispatched())
        want = {
            "settled": {"succeeded"},
            "released": {"failed", "cancelled"},
            "expired": {"failed"},
            "held": {"queued", "running"},
        }
        for job_id, job in self.jobs.items():
            assert statuses[job_id] in want[job.state], (job_id, job.state, statuses[job_id])
        assert 0 <= self.reserved <= self.credits


def test_ledger_state_machine(db_url: str) -> None:
    examples = EXAMPLES if db_url.startswith("sqlite") else PG_EXAMPLES
    machine = type("LedgerMachineOnThisBackend", (LedgerMachine,), {"url": db_url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
