"""Jobs in flight: how much a provider's latency costs the pipeline, and how many jobs one
worker host keeps waiting on the provider at once.

Pipeline: `POST /v1/jobs` (Flask test client, one thread: auth, validation, admission,
hold + job row, enqueue after commit) -> Redis -> `celery worker` on the threads pool
(WORKER_CONCURRENCY threads per process, `--workers` processes) -> simulated provider over
HTTP -> settle -> final status. Same processes, settings and job mix for every run; only
the provider's latency changes (a fault rule on the simulator, `latency_ms`).

- `latency` mode (default): N jobs (500) at 0 ms, then N at 2,000 ms. Prints jobs/s for
  both, their ratio, and the jobs in flight (peak and mean of `status = running`, sampled
  every 50 ms) and the worker's RSS at its peak.
- `hold` mode: 1,000 jobs at 10,000 ms: how many one host keeps in flight.

Jobs/s is printed two ways: end to end, N / (first submit -> last job final), which for
any finite N includes one full latency of pipeline fill (so at best T0 / (T0 + latency));
and steady state, the jobs finished between the 10th and the 90th percentile finish time
per second, which is what a long-running host sustains.

Jobs are spread over enterprise accounts (100 concurrency slots each) so that the
accounts' caps do not bound the figures: there are at least as many slots as jobs.

    .venv/bin/python -m bench.inflight                  # SQLite, both latencies
    .venv/bin/python -m bench.inflight --db postgresql
    .venv/bin/python -m bench.inflight --mode hold      # 1,000 jobs at 10 s
    .venv/bin/python -m bench.inflight --quick          # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/inflight.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import Engine, func, select

from bench import print_table
from bench.e2e_throughput import ADMIN_TOKEN, outcome, start_pipeline, wait_until
from ops.processes import CeleryWorker

SLOTS_PER_ACCOUNT = 100  # the enterprise plan's max_concurrent_jobs
JOB = {
    "operation": "idea_generation",
    "input": {"cluster": {"name": "Trail running", "keywords": ["trail shoes"]}, "count": 2},
}


@dataclass
class Run:
    label: str
    latency_ms: int
    n: int
    seconds: float = 0.0
    finished: list[float] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    @property
    def steady_per_second(self) -> float:
        """Jobs finished between the 10th and the 90th percentile finish time, per second."""
        times = sorted(self.finished)
        if len(times) < 10:
            return self.per_second
        low, high = times[len(times) // 10], times[(len(times) * 9) // 10]
        return (len(times) * 8 // 10) / (high - low) if high > low else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("latency", "hold"), default="latency")
    parser.add_argument("--jobs", type=int, help="jobs per run (500; hold mode 1,000)")
    parser.add_argument(
        "--latency-ms", type=int, help="the slow run's latency (2,000; hold 10,000)"
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--concurrency", type=int, help="threads per worker (WORKER_CONCURRENCY)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    hold = args.mode == "hold"
    args.jobs = args.jobs or (1000 if hold else 500)
    args.latency_ms = args.latency_ms if args.latency_ms is not None else (10_000 if hold else 2000)
    if args.quick:
        args.jobs, args.latency_ms = 20, 500
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be >= 1")
    return args


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
        )
    return total


def running(reader: Engine) -> int:
    from models import Job

    with reader.connect() as conn:
        return int(conn.execute(select(func.count()).where(Job.status == "running")).scalar_one())


def final_times(reader: Engine, ids: set[str]) -> list[float]:
    from models import Job, as_utc

    with reader.connect() as conn:
        rows = conn.execute(select(Job.id, Job.finished_at).where(Job.finished_at.is_not(None)))
        return [as_utc(at).timestamp() for job_id, at in rows if job_id in ids]


def measure(
    client: Any,
    keys: list[str],
    sim: str,
    run: Run,
    reader: Engine,
    pids: list[int],
    timeout: float,
) -> Run:
    """Submit run.n jobs round robin over the accounts at run.latency_ms; sample in flight."""
    if run.latency_ms:
        httpx.post(f"{sim}/_sim/faults", json={"latency_ms": run.latency_ms, "times": run.n})
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            run.in_flight.append(running(reader))
            run.rss_kb.append(rss_kb(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    ids: set[str] = set()
    start = time.monotonic()
    sampler.start()
    for i in range(run.n):
        response = client.post(
            "/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {keys[i % len(keys)]}"}
        )
        if response.status_code != 202:
            raise RuntimeError(f"submit failed: {response.status_code} {response.get_json()}")
        ids.add(response.get_json()["id"])
    end = wait_until(lambda: len(final_times(reader, ids)) >= run.n, timeout, run.label, poll=0.1)
    done.set()
    sampler.join()
    run.seconds = end - start
    run.finished = final_times(reader, ids)
    httpx.delete(f"{sim}/_sim/faults")
    return run


def setup_accounts(client: Any, jobs: int) -> list[str]:
    """Enough enterprise accounts that their slots cover every job of a run."""
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    keys = []
    for n in range(-(-jobs // SLOTS_PER_ACCOUNT)):
        body = client.post(
            "/v1/auth/register",
            json={"email": f"inflight{n}@example.com", "password": "bench-password"},
        ).get_json()
        account = body["account"]["id"]
        client.patch(
            f"/v1/admin/accounts/{account}",
            json={"plan": "enterprise", "status": "active"},
            headers=admin,
        )
        client.post(
            f"/v1/admin/accounts/{account}/credits",
            json={"amount": 5_000_000, "reason": "bench"},
            headers=admin,
        )
        keys.append(body["api_key"])
    return keys


def report(runs: list[Run], accounts: int, args: argparse.Namespace) -> None:
    rows = []
    for run in runs:
        flight = run.in_flight or [0]
        rows.append([
            run.label, run.n, f"{run.seconds:.2f}", run.per_second, run.steady_per_second,
            max(flight), f"{statistics.mean(flight):.0f}", f"{max(run.rss_kb or [0]) / 1024:.0f}",
        ])  # fmt: skip
    print()
    print_table(
        ["run", "jobs", "seconds", "jobs/s end to end", "jobs/s steady", "peak in flight",
         "mean in flight", "worker RSS MB (peak)"],
        rows,
    )  # fmt: skip
    if len(runs) == 2:
        fast, slow = runs
        fill = fast.seconds / (fast.seconds + slow.latency_ms / 1000)
        end_to_end = slow.per_second / fast.per_second
        print(
            f"ratio {slow.latency_ms} ms / 0 ms: end to end {end_to_end:.3f} (one latency of "
            f"pipeline fill alone gives T0/(T0+latency) = {fill:.3f} for {fast.n} jobs), "
            f"steady state {slow.steady_per_second / fast.steady_per_second:.3f}"
        )
    print(
        f"accounts: {accounts} enterprise x {SLOTS_PER_ACCOUNT} slots = "
        f"{accounts * SLOTS_PER_ACCOUNT} >= {args.jobs} jobs: per-account caps do not bound these"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.concurrency:
        os.environ["WORKER_CONCURRENCY"] = str(args.concurrency)
    with ExitStack() as stack:
        servers = start_pipeline(stack, args.db, "inflight", rate_limits=False)
        from settings import get_settings  # after start_pipeline set the env

        client, reader, sim = servers.client, servers.reader, servers.sim_url
        keys = setup_accounts(client, args.jobs)
        workers = [CeleryWorker(servers.env, name=f"inflight{n}") for n in range(args.workers)]
        for worker in workers:
            stack.callback(worker.stop)
            worker.start()
        pids = [w.pid for w in workers if w.pid]
        settings = get_settings()
        print(
            f"db={args.db} mode={args.mode} jobs={args.jobs} workers={args.workers} x "
            f"{settings.worker_pool} {settings.worker_concurrency} "
            f"load={os.getloadavg()[0]:.2f}"
        )
        plan = [("0 ms", 0), (f"{args.latency_ms} ms", args.latency_ms)]
        if args.mode == "hold":
            plan = plan[1:]
        warmup = min(args.jobs, 50)  # untimed: connections, imports, caches
        measure(client, keys, sim, Run("warm-up", 0, warmup), reader, pids, args.timeout)
        runs = []
        for label, latency in plan:
            run = measure(
                client, keys, sim, Run(label, latency, args.jobs), reader, pids, args.timeout
            )
            runs.append(run)
            print(
                f"{label}: {run.per_second:.1f} jobs/s, peak {max(run.in_flight or [0])} in flight",
                flush=True,
            )
        statuses, violations = outcome(servers.url)
        report(runs, len(keys), args)

    total = args.jobs * len(runs) + warmup
    print(f"jobs succeeded: {statuses.get('succeeded', 0)}/{total}  statuses: {statuses}")
    print(f"audit: {violations}  load after: {os.getloadavg()[0]:.2f}")
    return 0 if statuses.get("succeeded", 0) == total and not violations else 1


if __name__ == "__main__":
    sys.exit(main())
