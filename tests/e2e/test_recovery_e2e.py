"""Nothing in flight is lost, end to end, with real processes: a worker SIGKILLed with
jobs in flight, Redis killed and restarted empty, a database locked for 40 s while jobs
wait on the provider, a job running past its hold's original expiry. Every job ends
exactly once, charged once, caps recover, and the ledger audit passes.

The killed-worker and lost-broker tests run a private stack (API under gunicorn, worker,
beat) on a Redis of their own, so the suite's shared worker never sees their jobs; beat
runs the reconciler every 2 s and a run without a heartbeat for 4 s counts as dead.
"""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select, text

from billing.audit import audit
from models import CreditReservation, CreditTransaction, CreditUsageLog, Job, as_utc
from models.db import get_engine, transaction
from ops.processes import ApiServer, CeleryBeat, CeleryWorker, Child
from ops.redis_server import RedisServer
from tasks import periodic
from tests.support import auth, register, wait_for_job

pytestmark = pytest.mark.e2e

ADMIN = {"X-Admin-Token": "test-admin-token"}
FAST_RECOVERY = {
    "HEARTBEAT_INTERVAL_SECONDS": "1",
    "HEARTBEAT_STALE_SECONDS": "4",
    "DISPATCH_STALE_SECONDS": "4",
    "RECONCILE_INTERVAL_SECONDS": "2",
    "SWEEP_INTERVAL_SECONDS": "2",
}


def content(title: str) -> dict[str, Any]:
    return {"operation": "content_generation", "input": {"title": title, "word_count": 120}}


def charges(job_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per job: (deductions, usage logs)."""
    counts = []
    with transaction() as session:
        for model in (CreditTransaction, CreditUsageLog):
            query = select(model.job_id, func.count()).where(model.job_id.in_(job_ids))
            counts.append(dict(session.execute(query.group_by(model.job_id)).all()))
    return {job_id: (counts[0].get(job_id, 0), counts[1].get(job_id, 0)) for job_id in job_ids}


def jobs(job_ids: list[str]) -> list[Job]:
    with transaction() as session:
        return list(session.scalars(select(Job).where(Job.id.in_(job_ids))))


def assert_audit_clean() -> None:
    with transaction() as session:
        assert audit(session) == []


def wait_final(job_ids: list[str], timeout: float, *logs: Any) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        rows = jobs(job_ids)
        if all(job.status in ("succeeded", "failed", "cancelled") for job in rows):
            return rows
        if time.monotonic() > deadline:
            tails = "".join("".join(child.output[-30:]) for child in logs)
            states = sorted((job.status, job.attempts) for job in rows)
            raise AssertionError(f"jobs not final after {timeout}s: {states}\n{tails}")
        time.sleep(0.2)


class PrivateStack:
    """API, worker and beat on one Redis; each stopped at the end."""

    def __init__(self, env: dict[str, str], worker_concurrency: int | None = None) -> None:
        self.env = env
        self.api = ApiServer(env)
        self.worker = CeleryWorker(env, concurrency=worker_concurrency, name="private")
        self.beat = CeleryBeat(env)
        self.children: list[Child] = [self.api, self.worker, self.beat]  # stopped last first
        self.http = httpx.Client(base_url=self.api.url, timeout=30)

    def __enter__(self) -> PrivateStack:
        for child in self.children:
            child.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()
        for child in reversed(self.children):
            child.stop()

    def account(self, email: str, plan: str) -> str:
        registered = self.http.post(
            "/v1/auth/register", json={"email": email, "password": "correct horse"}
        ).json()
        account_id = registered["account"]["id"]
        self.http.patch(
            f"/v1/admin/accounts/{account_id}",
            json={"plan": plan, "status": "active"},
            headers=ADMIN,
        ).raise_for_status()
        key: str = registered["api_key"]
        return key

    def submit(self, key: str, body: dict[str, Any]) -> str:
        response = self.http.post("/v1/jobs", json=body, headers=auth(key))
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def concurrency(self, key: str) -> dict[str, int]:
        body: dict[str, int] = self.http.get("/v1/account", headers=auth(key)).json()["concurrency"]
        return body


def stack_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {**env, **FAST_RECOVERY, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url}


@pytest.fixture
def private_redis(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def wait_sim_calls(sim_control: Any, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sim_control.get("/_sim/stats").json()["requests"]["chat"] < n:
        assert time.monotonic() < deadline, f"the provider did not see {n} calls"
        time.sleep(0.05)


def test_a_killed_workers_jobs_are_run_again_by_the_reconciler(
    env: dict[str, str], private_redis: str, sim_control: Any
) -> None:
    sim_control.post("/_sim/faults", json={"latency_ms": 3000, "times": 5, "match": "sigkill"})
    with PrivateStack(stack_env(env, private_redis)) as stack:
        key = stack.account("killed@example.com", "starter")  # 5 slots
        ids = [stack.submit(key, content(f"sigkill {n}")) for n in range(8)]
        wait_sim_calls(sim_control, 5)  # 5 in the provider, 3 waiting for a slot
        stack.worker.stop(signal.SIGKILL)
        assert sorted(job.status for job in jobs(ids)) == ["queued"] * 3 + ["running"] * 5

        stack.worker.start()  # a fresh worker; nobody re-sends anything by hand
        final = wait_final(ids, 90, stack.worker, stack.beat)

        assert [job.status for job in final] == ["succeeded"] * 8
        assert sorted(job.attempts for job in final) == [1, 1, 1, 2, 2, 2, 2, 2]
        assert charges(ids) == dict.fromkeys(ids, (1, 1))
        assert stack.concurrency(key) == {"running": 0, "limit": 5, "queued": 0}
    assert_audit_clean()


# What it tests is between the broker and the reconciler (tests/billing/test_reconciliation
# runs the database side on both): one database keeps the suite's time.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_lost_message_behind_cancelled_jobs_messages_is_sent_again(
    env: dict[str, str], private_redis: str, sim_control: Any
) -> None:
    """Cancelled jobs' messages wait in the queue until a worker skips them. Counted, two
    of them hid the lost message of a live job until the queue drained (after the
    blocker's 16 s); the reconciler finds it missing by id and sends it again while the
    only worker thread is busy (stale after 4 s, reconciled every 2 s)."""
    sim_control.post("/_sim/faults", json={"latency_ms": 16000, "times": 1, "match": "blocker"})
    broker = redis.Redis.from_url(private_redis)

    def waiting_for(job_id: str) -> list[bytes]:
        return [
            raw
            for raw in broker.lrange("text", 0, -1)
            if job_id in base64.b64decode(json.loads(raw)["body"]).decode()
        ]

    stack_environment = stack_env(env, private_redis)
    # The stack's one worker thread is held by the blocker; beat's reconciler runs here.
    periodic_worker = CeleryWorker(stack_environment, queues="default", name="periodic")
    with PrivateStack(stack_environment, worker_concurrency=1) as stack:
        periodic_worker.start()
        stack.children.append(periodic_worker)
        key = stack.account("hidden@example.com", "starter")  # 5 slots
        blocker = stack.submit(key, content("blocker"))
        wait_sim_calls(sim_control, 1)  # the one worker thread is in the provider
        cancelled = [stack.submit(key, content(f"hidden cancel {n}")) for n in range(2)]
        lost = stack.submit(key, content("hidden lost"))
        # A message in the image queue too: counted, an empty queue made the count
        # unreadable and every stale job was sent again anyway.
        image = stack.submit(key, {"operation": "image_generation", "input": {"prompt": "x"}})
        for job_id in cancelled:
            answer = stack.http.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
            assert answer.json()["status"] == "cancelled"
        (message,) = waiting_for(lost)
        assert broker.lrem("text", 1, message) == 1
        assert (broker.llen("text"), broker.llen("image")) == (2, 1)  # for 1 and 1 jobs

        deadline = time.monotonic() + 11
        while not waiting_for(lost):
            print(
                "DBG",
                time.monotonic(),
                broker.llen("text"),
                [(j.id[-4:], j.status) for j in jobs([blocker, lost, *cancelled])],
                flush=True,
            )
            assert time.monotonic() < deadline, "the lost message was not sent again"
            time.sleep(0.2)
        assert [job.status for job in jobs([blocker])] == ["running"]

        everything = [blocker, lost, image, *cancelled]
        final = {job.id: job.status for job in wait_final(everything, 90)}
        assert final == dict.fromkeys([blocker, lost, image], "succeeded") | dict.fromkeys(
            cancelled, "cancelled"
        )
        assert charges(everything) == dict.fromkeys([blocker, lost, image], (1, 1)) | (
            dict.fromkeys(cancelled, (0, 0))
        )
    assert_audit_clean()


def test_a_lost_broker_loses_no_job(env: dict[str, str], sim_control: Any) -> None:
    """Redis killed with jobs running, dispatched (messages in Redis) and waiting for a
    slot, and restarted empty on the same port: all of them end exactly once."""
    sim_control.post("/_sim/faults", json={"latency_ms": 3000, "times": 2, "match": "lost"})
    broker = RedisServer().start()
    port = broker.port
    try:
        # Two threads: 2 jobs run, 3 more dispatched wait in Redis, 5 wait for a slot.
        with PrivateStack(stack_env(env, broker.url), worker_concurrency=2) as stack:
            key = stack.account("lost@example.com", "starter")
            ids = [stack.submit(key, content(f"lost {n}")) for n in range(10)]
            wait_sim_calls(sim_control, 2)
            assert redis.Redis.from_url(broker.url).llen("text") == 3
            assert broker.proc is not None
            broker.proc.kill()
            broker.proc.wait()
            broker.stop()
            time.sleep(2)
            broker = RedisServer(port=port).start()  # on the same port, empty
            restarted = time.monotonic()

            final = wait_final(ids, 120, stack.worker, stack.beat)

            assert time.monotonic() - restarted < 120
            assert [job.status for job in final] == ["succeeded"] * 10
            assert charges(ids) == dict.fromkeys(ids, (1, 1))
            assert stack.concurrency(key)["running"] == 0
    finally:
        broker.stop()
    assert_audit_clean()


@contextmanager
def database_locked(url: str) -> Iterator[None]:
    """An open write transaction (SQLite) or table locks (PostgreSQL) held by the test."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
    else:
        with get_engine(url).connect() as connection, connection.begin():
            connection.execute(
                text("LOCK TABLE jobs, credit_reservations, accounts IN EXCLUSIVE MODE")
            )
            yield


def test_a_database_locked_for_40s_while_jobs_wait_on_the_provider(
    e2e: Any, sim_control: Any, db_url: str, worker: Any
) -> None:
    key, account = register(e2e)
    e2e.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "starter"}, headers=ADMIN)
    sim_control.post("/_sim/faults", json={"latency_ms": 4000, "times": 5, "match": "locked"})
    ids = [
        e2e.post("/v1/jobs", json=content(f"locked {n}"), headers=auth(key)).get_json()["id"]
        for n in range(5)
    ]
    wait_sim_calls(sim_control, 5)

    with database_locked(db_url):
        time.sleep(40)  # the answers arrive at 4 s; their settles wait or retry

    final = [wait_for_job(e2e, key, job_id, timeout=120) for job_id in ids]
    assert [job["status"] for job in final] == ["succeeded"] * 5
    assert charges(ids) == dict.fromkeys(ids, (1, 1))
    if db_url.startswith("sqlite"):  # past the 30 s busy timeout: the settle was retried
        assert "ending not recorded" in "".join(worker.output)


def test_a_job_running_past_its_holds_original_expiry_still_settles(
    e2e: Any, sim_control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOLD_TTL_SECONDS", "3")  # the API holds for 3 s, the sweeper agrees
    key, _ = register(e2e)
    sim_control.post("/_sim/faults", json={"latency_ms": 7000, "times": 1})
    job_id = e2e.post("/v1/jobs", json=content("outlives its hold"), headers=auth(key)).get_json()[
        "id"
    ]
    wait_sim_calls(sim_control, 1)
    time.sleep(4.5)  # past expires_at; the worker heart-beats every second

    assert periodic.run_periodic("sweep") == "0 expired hold(s) released"
    job = wait_for_job(e2e, key, job_id, timeout=30)

    assert job["status"] == "succeeded"
    assert job["credits_charged"] > 0
    with transaction() as session:
        hold = session.scalar(select(CreditReservation).where(CreditReservation.job_id == job_id))
        assert hold is not None
        assert hold.status == "settled"
        assert as_utc(hold.expires_at) < as_utc(hold.resolved_at or hold.expires_at)


def test_heartbeats_keep_running_jobs_alive_for_the_sweeper(
    e2e: Any, sim_control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper runs every couple of seconds while 3 jobs outlive their 2 s holds."""
    monkeypatch.setenv("HOLD_TTL_SECONDS", "2")
    key, account = register(e2e)
    e2e.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "starter"}, headers=ADMIN)
    sim_control.post("/_sim/faults", json={"latency_ms": 6000, "times": 3})
    ids = [
        e2e.post("/v1/jobs", json=content(f"alive {n}"), headers=auth(key)).get_json()["id"]
        for n in range(3)
    ]
    summaries: list[str] = []
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.wait(1.5):
            summaries.append(periodic.run_periodic("sweep"))

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        final = [wait_for_job(e2e, key, job_id, timeout=30) for job_id in ids]
    finally:
        stop.set()
        thread.join()
    assert [job["status"] for job in final] == ["succeeded"] * 3
    assert len(summaries) >= 2
    assert set(summaries) == {"0 expired hold(s) released"}
