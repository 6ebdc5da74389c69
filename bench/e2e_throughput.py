"""Jobs/s through the whole pipeline against a no-op Celery task, same broker and worker.

Pipeline: `POST /v1/jobs` (Flask test client: auth, validation, model policy, hold +
job row in one transaction, enqueue after commit) -> Redis -> one real `celery worker`
process (-c 2) -> start_job -> simulated provider over HTTP (zero latency) -> settle
-> final status. Rate = N / (first submit -> last job final, seen by polling the DB).

Baseline: N `bench.noop` tasks (bench/noop.py: INCR a Redis counter) sent to the same
worker through the same Celery app. Rate = N / (first send -> counter reaches N).

Everything (Redis, the simulated provider, PostgreSQL if asked, the worker) is started
here and stopped at the end; all traffic stays on 127.0.0.1.

    .venv/bin/python -m bench.e2e_throughput            # 300 jobs on SQLite
    .venv/bin/python -m bench.e2e_throughput --db postgresql
    .venv/bin/python -m bench.e2e_throughput --quick    # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # `python bench/e2e_throughput.py` (make bench)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, create_engine, func, select

from bench import print_table
from ops.postgres_server import PostgresServer
from ops.processes import CeleryWorker, stop_group
from ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token"
FINAL = ("succeeded", "failed", "cancelled")
# The `scale` plan allows 600 requests a minute per account (api/ratelimit.py): stay under.
JOBS_PER_ACCOUNT = 500
# Small inputs, one per operation kind the mix uses (two text, one image).
JOB_MIX: list[tuple[str, dict[str, Any]]] = [
    ("clustering", {"keywords": ["running shoes", "trail running", "yoga mats"]}),
    ("image_prompt_extraction", {"text": "A runner crosses a misty trail at dawn.", "count": 1}),
    ("image_generation", {"prompt": "a runner on a misty trail at dawn", "count": 1}),
]


@dataclass(frozen=True)
class Rate:
    label: str
    n: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs (and noop tasks) per run")
    parser.add_argument("--warmup", type=int, default=6, help="warm-up jobs and tasks, untimed")
    parser.add_argument("--rounds", type=int, default=5, help="baseline/pipeline alternations")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (s)")
    parser.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="RATE_LIMITS_ENABLED=0 (to see what the per-account limiter costs)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.warmup, args.rounds = 15, 3, 1
    if args.jobs < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--jobs and --rounds must be >= 1, --warmup >= 0")
    return args


# --- processes ---------------------------------------------------------------------------


@contextmanager
def simulated_provider() -> Iterator[str]:
    """The shipped simulated provider in its own process on a free port, zero latency."""
    env = {**os.environ, "SIM_LATENCY_MS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"simulated provider did not start: {line!r}")
        port = line.strip().rsplit(":", 1)[-1]
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc, timeout=10)


# --- measurement -------------------------------------------------------------------------


def wait_until(done: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> float:
    """Poll until `done()`; returns the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {timeout:.0f}s")
        time.sleep(poll)


def final_count(reader: Engine) -> int:
    from models import Job

    with reader.connect() as conn:
        return int(conn.execute(select(func.count()).where(Job.status.in_(FINAL))).scalar_one())


def run_baseline(n: int, redis_url: str, timeout: float) -> Rate:
    """Send n noop tasks and wait for the worker to count them all."""
    import redis

    from bench.noop import COUNTER_KEY, QUEUE, TASK_NAME
    from workers.celery_app import celery

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(COUNTER_KEY)
        start = time.monotonic()
        for _ in range(n):
            celery.send_task(TASK_NAME, queue=QUEUE)
        end = wait_until(
            lambda: int(cast(bytes | None, client.get(COUNTER_KEY)) or 0) >= n, timeout, "noop"
        )
    finally:
        client.close()
    return Rate("baseline: noop task", n, end - start)


def submit(client: Any, keys: list[str], i: int) -> None:
    """Job i of the mix, from account i mod len(keys)."""
    operation, job_input = JOB_MIX[i % len(JOB_MIX)]
    key = keys[i % len(keys)]
    response = client.post(
        "/v1/jobs",
        json={"operation": operation, "input": job_input},
        headers={"Authorization": f"Bearer {key}"},
    )
    if response.status_code != 202:
        raise RuntimeError(f"submit failed: {response.status_code} {response.get_json()}")


def run_pipeline(
    client: Any, keys: list[str], n: int, already_final: int, reader: Engine, timeout: float
) -> tuple[Rate, Rate]:
    """Submit n jobs, wait until all are final; returns (pipeline, submit-only) rates."""
    start = time.monotonic()
    for i in range(n):
        submit(client, keys, i)
    submitted = time.monotonic()
    target = already_final + n
    end = wait_until(lambda: final_count(reader) >= target, timeout, "jobs", poll=0.02)
    return Rate("pipeline: POST /v1/jobs -> final", n, end - start), Rate(
        "  of which: submit loop (API only)", n, submitted - start
    )


def setup_accounts(client: Any, jobs: int) -> list[str]:
    """Enough `scale` accounts that none passes its per-minute request limit; their keys.

    The limiter stays on (its cost is part of the pipeline); jobs go round robin, at most
    JOBS_PER_ACCOUNT per account in a run that takes well under a minute.
    """
    count = -(-jobs // JOBS_PER_ACCOUNT)
    return [setup_account(client, f"bench{i}@example.com", -(-jobs // count)) for i in range(count)]


def setup_account(client: Any, email: str, jobs: int) -> str:
    """Register, make it an active `scale` account with plenty of credits; returns its key."""
    response = client.post("/v1/auth/register", json={"email": email, "password": "bench-password"})
    if response.status_code != 201:
        raise RuntimeError(f"register failed: {response.get_json()}")
    body = response.get_json()
    key, account_id = body["api_key"], body["account"]["id"]
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    response = client.patch(
        f"/v1/admin/accounts/{account_id}", json={"plan": "scale", "status": "active"},
        headers=admin,
    )  # fmt: skip
    if response.status_code != 200:
        raise RuntimeError(f"plan change failed: {response.get_json()}")
    amount = min(10_000_000, max(100_000, jobs * 1_000))
    response = client.post(
        f"/v1/admin/accounts/{account_id}/credits", json={"amount": amount, "reason": "bench"},
        headers=admin,
    )  # fmt: skip
    if response.status_code != 200:
        raise RuntimeError(f"credit grant failed: {response.get_json()}")
    return str(key)


def service_times(url: str) -> list[list[object]]:
    """Per operation: median queue wait (created->started) and worker time (started->final)."""
    from models import Job
    from models.db import transaction

    with transaction(url) as session:
        rows = session.execute(
            select(Job.operation, Job.created_at, Job.started_at, Job.finished_at)
        ).all()
    spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for operation, created, started, finished in rows:
        if started is not None and finished is not None:
            wait = (started - created).total_seconds() * 1000
            spans[operation].append((wait, (finished - started).total_seconds() * 1000))
    return [
        [op, len(v), statistics.median(w for w, _ in v), statistics.median(t for _, t in v)]
        for op, v in sorted(spans.items())
    ]


def outcome(url: str) -> tuple[dict[str, int], list[str]]:
    """Job counts by status, and the ledger audit's violations."""
    from billing.audit import audit
    from models import Job
    from models.db import transaction

    with transaction(url) as session:
        statuses = dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        failures = session.execute(
            select(Job.error_code, func.count()).where(Job.status != "succeeded")
            .group_by(Job.error_code)
        ).all()  # fmt: skip
        violations = audit(session)
    if failures:
        print("non-succeeded jobs by error code:", dict(failures))
    return {str(k): int(v) for k, v in statuses.items()}, violations


@dataclass(frozen=True)
class Pipeline:
    """What `start_pipeline` brought up: the database, the worker env, an API client."""

    url: str
    env: dict[str, str]
    sim_url: str
    redis_url: str
    client: Any
    reader: Engine


def start_pipeline(stack: ExitStack, db: str, name: str, rate_limits: bool) -> Pipeline:
    """Redis, the simulated provider, the database (migrated, seeded), the API's test
    client and a plain reader engine, all stopped when `stack` closes."""
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"aijobs-{name}-"))
    redis_server = stack.enter_context(RedisServer())
    sim_url = stack.enter_context(simulated_provider())
    if db == "postgresql":
        url = stack.enter_context(PostgresServer(dbname=f"aijobs_{name}")).url
    else:
        url = f"sqlite:///{tmp}/bench.db"
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "OPENAI_BASE_URL": sim_url + "/v1",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "RATE_LIMITS_ENABLED": "1" if rate_limits else "0",
        "AUTH_THROTTLE_ENABLED": "0",  # it signs up many accounts from one address
    }
    # Before anything reads settings: celeryconfig takes the broker URL at import.
    os.environ.update(env)

    from api.app import create_app
    from billing import catalog
    from models.db import dispose_engines, transaction
    from ops.cli import migrate
    from workers.celery_app import celery

    stack.callback(dispose_engines)
    stack.callback(celery.close)
    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    app = create_app()
    logging.getLogger().setLevel(logging.WARNING)  # no per-request INFO lines
    # Polls read through a plain engine: on SQLite the app's engine opens every
    # transaction with BEGIN IMMEDIATE, and a poll must not queue for the write lock.
    reader = create_engine(url)
    stack.callback(reader.dispose)
    worker_env = {k: v for k, v in env.items() if k != "ADMIN_TOKEN"}
    return Pipeline(url, worker_env, sim_url, redis_server.url, app.test_client(), reader)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        servers = start_pipeline(stack, args.db, "bench", not args.no_rate_limits)
        url, env, client, reader = servers.url, servers.env, servers.client, servers.reader
        keys = setup_accounts(client, args.warmup + args.rounds * args.jobs)
        worker = CeleryWorker(
            env,
            "text,image,default,bench",
            args.concurrency,
            name="bench",
            extra_args=["--include", "bench.noop"],
        )
        stack.callback(worker.stop)
        worker.start()

        print(
            f"db={args.db} jobs={args.jobs} x {args.rounds} rounds warmup={args.warmup} "
            f"worker -c {args.concurrency} "
            f"rate limits={'off' if args.no_rate_limits else 'on'} accounts={len(keys)}"
        )
        if args.warmup:
            run_baseline(args.warmup, servers.redis_url, args.timeout)
            run_pipeline(client, keys, args.warmup, 0, reader, args.timeout)
        rounds: list[tuple[Rate, Rate, Rate]] = []
        for r in range(args.rounds):
            baseline = run_baseline(args.jobs, servers.redis_url, args.timeout)
            done = args.warmup + r * args.jobs
            pipeline, submit_only = run_pipeline(
                client, keys, args.jobs, done, reader, args.timeout
            )
            rounds.append((baseline, pipeline, submit_only))
            print(
                f"round {r + 1}: baseline {baseline.per_second:6.1f}/s  "
                f"pipeline {pipeline.per_second:6.1f}/s  "
                f"ratio {pipeline.per_second / baseline.per_second:.3f}",
                flush=True,
            )
        statuses, violations = outcome(url)
        spans = service_times(url)

    total = args.warmup + args.rounds * args.jobs
    succeeded = statuses.get("succeeded", 0)
    baseline, pipeline, submit_only = (
        Rate(runs[0].label, sum(x.n for x in runs), sum(x.seconds for x in runs))
        for runs in zip(*rounds, strict=True)
    )
    print()
    print_table(
        ["run (all rounds)", "n", "seconds", "per s"],
        [
            [r.label, r.n, f"{r.seconds:.2f}", r.per_second]
            for r in (baseline, pipeline, submit_only)
        ],
    )
    print(f"ratio pipeline/baseline: {pipeline.per_second / baseline.per_second:.3f}")
    print()
    print_table(["operation", "jobs", "median queue wait ms", "median worker ms"], spans)
    print()
    print(f"jobs succeeded: {succeeded}/{total}  statuses: {statuses}")
    print(f"audit: {violations}")
    return 0 if succeeded == total and not violations else 1


if __name__ == "__main__":
    sys.exit(main())
