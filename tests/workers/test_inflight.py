"""The jobs a worker process has in flight (workers/inflight.py): one heartbeat statement
for all of them, and a cancel seen by the heartbeat or at a safe point."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from billing import runs
from models import Job
from models.db import transaction
from tests.factories import IMAGE, make_account, request, submit
from workers import inflight
from workers.inflight import JobCancelled


def running_jobs(n: int) -> tuple[str, list[str]]:
    with transaction() as session:
        account = make_account(session, credits=100)
        ids = [submit(session, account.id, request(IMAGE)).id for _ in range(n)]
    with transaction() as session:
        for job_id in ids:
            assert runs.start_job(session, job_id) is not None
    return account.id, ids


def heartbeat(job_id: str) -> Any:
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.heartbeat_at


def test_one_beat_refreshes_every_job_in_flight_and_stops_the_cancelled(env: Any) -> None:
    account_id, ids = running_jobs(3)
    before = [heartbeat(job_id) for job_id in ids]
    with transaction() as session:
        runs.cancel_job(session, account_id, ids[1])
    flights = {job_id: inflight.Flight(job_id) for job_id in ids}

    inflight.registry.beat_once(flights)

    assert all(heartbeat(j) > b for j, b in zip(ids, before, strict=True))
    assert [flights[j].stop.is_set() for j in ids] == [False, True, False]


def test_a_safe_point_reads_the_cancel_from_the_database(env: Any) -> None:
    account_id, (job_id,) = running_jobs(1)
    flight = inflight.Flight(job_id)
    flight.check()  # not cancelled: goes on
    with transaction() as session:
        runs.cancel_job(session, account_id, job_id)
    with pytest.raises(JobCancelled):
        flight.check()
    with pytest.raises(JobCancelled):
        flight.sleep(timedelta(seconds=30).total_seconds())  # wakes at once: already stopped


def test_flying_registers_the_job_only_while_it_runs(env: Any) -> None:
    with inflight.flying("job_a"), inflight.flying("job_b"):
        assert {"job_a", "job_b"} <= set(inflight.registry.job_ids())
    assert not {"job_a", "job_b"} & set(inflight.registry.job_ids())
