"""JobTask on its own: task functions called directly (no broker), real DB, the
simulated provider over HTTP through the openai SDK."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from openai import OpenAI
from sqlalchemy import func, select

from billing import accounts
from billing.audit import audit
from billing.operations import OPERATIONS
from billing.runs import JobRun, Outcome, cancel_job
from billing.submission import JobRequest, submit_job
from models import CreditTransaction, CreditUsageLog, Job, UnbilledUsage
from models.db import transaction
from tasks.clustering import clustering
from tasks.content_generation import content_generation

KEYWORDS = {"keywords": ["red shoes", "red boots", "blue hats"]}


def _submit(operation: str, job_input: dict[str, Any]) -> str:
    with transaction() as session:
        registration = accounts.register(session, "task@example.com", "long enough", "", 14)
        job = submit_job(
            session,
            registration.account,
            JobRequest(operation=operation, input=job_input),
            timedelta(minutes=15),
        ).job
        return job.id


def _job(job_id: str) -> Job:
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _charges(job_id: str) -> tuple[int, int]:
    with transaction() as session:
        deductions = session.scalar(select(func.count()).where(CreditTransaction.job_id == job_id))
        logs = session.scalar(select(func.count()).where(CreditUsageLog.job_id == job_id))
        assert audit(session) == []
        return deductions or 0, logs or 0


def test_a_redelivered_task_charges_once(env: Any, sim_control: Any) -> None:
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "succeeded"
    assert clustering.run(job_id) == "skipped"

    job = _job(job_id)
    assert job.status == "succeeded"
    assert job.attempts == 1
    assert _charges(job_id) == (1, 1)
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 1


def test_a_task_redelivered_while_running_runs_again_and_charges_once(env: Any) -> None:
    job_id = _submit("clustering", KEYWORDS)
    with transaction() as session:
        session.get(Job, job_id).status = "running"  # type: ignore[union-attr]

    assert clustering.run(job_id) == "succeeded"
    assert _charges(job_id) == (1, 1)


def test_truncated_output_fails_the_job_and_charges_its_usage(env: Any, monkeypatch: Any) -> None:
    """The provider billed the tokens of a cut-off answer: the job fails and pays for
    them (this test asserted "nothing charged" before usage was always billed)."""
    cut_short = replace(OPERATIONS["content_generation"], output_tokens=lambda inp: 5)
    monkeypatch.setitem(OPERATIONS, "content_generation", cut_short)
    job_id = _submit("content_generation", {"title": "Cut short"})

    assert content_generation.run(job_id) == "failed"

    job = _job(job_id)
    assert (job.status, job.error_code) == ("failed", "invalid_output")
    assert "cut off" in (job.error_message or "")
    assert "charged" in (job.error_message or "")
    assert 0 < job.credits_charged <= job.reserved_credits
    assert _charges(job_id) == (1, 1)
    with transaction() as session:
        log = session.query(CreditUsageLog).filter_by(job_id=job_id).one()
        assert (log.outcome, log.credits, log.tokens_out) == ("failed", job.credits_charged, 5)


@pytest.mark.parametrize(
    ("error", "code"),
    [(SoftTimeLimitExceeded(), "timeout"), (RuntimeError("boom"), "internal_error")],
)
def test_timeouts_and_bugs_fail_the_job_cleanly(
    env: Any, monkeypatch: Any, error: BaseException, code: str
) -> None:
    def explode(self: Any, run: JobRun, flight: Any) -> Outcome:
        raise error

    monkeypatch.setattr("workers.runtime.TextHandler.execute", explode)
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "failed"

    job = _job(job_id)
    assert (job.status, job.error_code) == ("failed", code)
    assert "boom" not in (job.error_message or "")
    assert _charges(job_id) == (0, 0)


def test_a_cancelled_job_is_not_run(env: Any, sim_control: Any) -> None:
    job_id = _submit("clustering", KEYWORDS)
    with transaction() as session:
        cancel_job(session, _job(job_id).account_id, job_id)

    assert clustering.run(job_id) == "skipped"
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 0


def test_task_options_guard_delivery() -> None:
    for task in (clustering, content_generation):
        assert task.acks_late is True
        assert task.reject_on_worker_lost is True
        assert task.ignore_result is True


def _flaky_finish(monkeypatch: Any, failures: int, error: Exception) -> list[int]:
    """Make the first `failures` endings raise `error`; the rest run for real."""
    from workers import runtime

    real, calls = runtime._finish, []

    def finish(run: JobRun, outcome: Outcome) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return real(run, outcome)

    monkeypatch.setattr(runtime, "_finish", finish)
    return calls


def _locked() -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("UPDATE ...", {}, Exception("database is locked"))


def test_an_ending_the_database_refuses_for_a_while_is_retried(
    env: Any, monkeypatch: Any, sim_control: Any
) -> None:
    calls = _flaky_finish(monkeypatch, 2, _locked())
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "succeeded"

    assert len(calls) == 3
    assert _charges(job_id) == (1, 1)
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 1


def test_an_ending_that_cannot_be_recorded_is_not_acknowledged_as_done(
    env: Any, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Past SETTLE_RETRY_SECONDS the task asks Celery to retry it (here, called directly,
    the error surfaces): the job stays running, uncharged, for a new run to finish. The
    provider usage of the run that could not be recorded is in the log, its only record."""
    monkeypatch.setenv("SETTLE_RETRY_SECONDS", "0.3")
    _flaky_finish(monkeypatch, 1000, _locked())
    job_id = _submit("clustering", KEYWORDS)

    with pytest.raises(Exception, match="database is locked"):
        clustering.run(job_id)

    assert _job(job_id).status == "running"
    assert _charges(job_id) == (0, 0)
    (line,) = [r.getMessage() for r in caplog.records if "usage is unrecorded" in r.getMessage()]
    tokens = dict(part.split("=") for part in line.split(": ")[-1].split())
    assert int(tokens["tokens_in"]) > 0
    assert int(tokens["tokens_out"]) > 0


def test_a_result_the_database_refuses_ends_failed_paying_its_usage(
    env: Any, monkeypatch: Any
) -> None:
    from sqlalchemy.exc import DataError

    _flaky_finish(monkeypatch, 1, DataError("INSERT ...", {}, Exception("NUL byte")))
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "failed"

    job = _job(job_id)
    assert job.error_code == "result_rejected"
    assert job.result is None
    assert job.credits_charged > 0
    assert _charges(job_id) == (1, 1)


ANSWER = json.dumps({"clusters": [{"name": "Footwear", "keywords": KEYWORDS["keywords"]}]})


def _provider_reports(monkeypatch: Any, usage: dict[str, Any] | None) -> None:
    """Answer every chat call with a good clustering and `usage` as given, through the
    real openai SDK (which does not check the types of its fields)."""
    from workers import provider

    def answer(request: httpx.Request) -> httpx.Response:
        body: dict[str, Any] = {
            "id": "chatcmpl-odd",
            "object": "chat.completion",
            "created": 0,
            "model": json.loads(request.content)["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
        }
        if usage is not None:
            body["usage"] = usage
        return httpx.Response(200, json=body)

    sdk = OpenAI(
        base_url="http://provider.test/v1",
        api_key="test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )
    monkeypatch.setattr(provider, "_client", lambda settings=None: sdk)


def _usage_log(job_id: str) -> CreditUsageLog:
    with transaction() as session:
        return session.execute(select(CreditUsageLog).filter_by(job_id=job_id)).scalar_one()


def test_whole_float_token_counts_are_billed_as_integers(env: Any, monkeypatch: Any) -> None:
    _provider_reports(monkeypatch, {"prompt_tokens": 100.0, "completion_tokens": 50.0})
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "succeeded"

    log = _usage_log(job_id)
    assert (log.tokens_in, log.tokens_out) == (100, 50)
    assert _job(job_id).credits_charged == log.credits > 0
    assert _charges(job_id) == (1, 1)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": None},
        {"prompt_tokens": "100", "completion_tokens": 12.5},
        None,
    ],
)
def test_odd_token_counts_are_billed_at_the_bytes_bound(
    env: Any, monkeypatch: Any, usage: dict[str, Any] | None
) -> None:
    """An unknown count is billed at the bytes sent or answered (a token is at least a
    byte), so an answer is never free because its usage was garbled or missing."""
    _provider_reports(monkeypatch, usage)
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "succeeded"

    job, log = _job(job_id), _usage_log(job_id)
    assert job.attempts == 1
    assert log.tokens_in > len(json.dumps(KEYWORDS))
    assert log.tokens_out == len(ANSWER.encode())
    assert 0 < job.credits_charged == log.credits <= job.reserved_credits
    assert _charges(job_id) == (1, 1)


def test_absurd_token_counts_are_clamped_and_charged_at_most_the_hold(
    env: Any, monkeypatch: Any
) -> None:
    from workers.provider_usage import MAX_INPUT_TOKENS

    huge = 3_000_000_000
    _provider_reports(monkeypatch, {"prompt_tokens": huge, "completion_tokens": huge})
    job_id = _submit("clustering", KEYWORDS)

    assert clustering.run(job_id) == "succeeded"

    job, log = _job(job_id), _usage_log(job_id)
    max_tokens = OPERATIONS["clustering"].max_output_tokens(KEYWORDS)
    assert (log.tokens_in, log.tokens_out) == (MAX_INPUT_TOKENS, max_tokens)
    assert job.credits_charged == job.reserved_credits
    assert _charges(job_id) == (1, 1)


@pytest.mark.parametrize("tokens_in", [100.0, 3_000_000_000])
def test_an_ending_that_raises_fails_the_job_once(
    env: Any, monkeypatch: Any, tokens_in: Any
) -> None:
    """Usage that slipped past the provider client (a float the pricing cannot multiply,
    a count the usage log cannot store on PostgreSQL) ends the job failed on its first
    run, hold closed, usage recorded: the job is not left running for the reconciler to
    run it, and call the provider, again and again."""
    from workers import provider

    def chat(*args: Any, **kwargs: Any) -> provider.ChatResult:
        return provider.ChatResult(ANSWER, tokens_in, 50, "stop")

    monkeypatch.setattr(provider, "chat", chat)
    job_id = _submit("clustering", KEYWORDS)

    status = clustering.run(job_id)

    job = _job(job_id)
    assert (job.status, job.attempts) == (status, 1)
    with transaction() as session:
        assert audit(session) == []
        unbilled = session.scalars(select(UnbilledUsage).filter_by(job_id=job_id)).all()
        logs = session.scalars(select(CreditUsageLog).filter_by(job_id=job_id)).all()
    if isinstance(tokens_in, float):
        assert (job.status, job.error_code, job.credits_charged) == ("failed", "internal_error", 0)
        assert [(u.tokens_in, u.tokens_out, u.reason) for u in unbilled] == [
            (100, 50, "internal_error")
        ]
        assert logs == []
    else:  # stored as is on SQLite; refused on PostgreSQL, then billed clamped
        assert job.status in ("succeeded", "failed")
        assert job.error_code in (None, "result_rejected")
        assert job.credits_charged == job.reserved_credits
        assert len(logs) == 1
        assert unbilled == []
