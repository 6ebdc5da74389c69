"""`POST /v1/jobs` through the production server against a bare Flask endpoint, same run.

Both apps run under gunicorn with `gunicorn.conf.py`, as `make run` starts the API
(`WEB_CONCURRENCY` x `GUNICORN_THREADS`, the buffering gthread worker, access log on,
Prometheus samples in a multiprocess directory). The bare app (bench/bare_app.py) parses
the same JSON and answers 202. M clients on keep-alive connections send N requests in
all; each measurement alternates bare and API, `--rounds` times, first with the Celery
consumers paused (no worker: the API alone, its messages wait in Redis), then with a
worker running beside it (threads pool, zero-latency simulated provider), as on one host
in production. Prints req/s, p50, p99 and the ratios API/bare, then audits the ledger.

The API keeps every check on: API-key auth, the account's status, role and per-minute
limit (a bench plan allows 10,000 a minute and 10,000 jobs at once, so every submission
takes a slot and is published), budget, model policy, hold + job row + admission in one
transaction, the publish after commit.

    .venv/bin/python -m bench.admission                 # SQLite and PostgreSQL, ~4 min
    .venv/bin/python -m bench.admission --db sqlite --requests 3000 --clients 16
    .venv/bin/python -m bench.admission --quick         # smoke run
    .venv/bin/python -m bench.admission --db sqlite --phases paused --profile /tmp/api
        # py-spy samples the API's workers during its measurements: /tmp/api-sqlite.txt
        # (collapsed stacks) and the top functions by inclusive share on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python bench/admission.py` (make bench)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import redis

from bench import each_backend, print_table
from bench.e2e_throughput import ADMIN_TOKEN, simulated_provider
from bench.slow_clients import start_gunicorn
from celeryconfig import QUEUES
from ops.processes import CeleryWorker, stop_group
from ops.redis_server import RedisServer

BODY = {"operation": "clustering", "input": {"keywords": ["running shoes", "trail running"]}}
BENCH_PLAN = {
    "slug": "bench",
    "name": "Bench",
    "price": "99.00",
    "requests_per_minute": 10_000,
    "max_concurrent_jobs": 10_000,
}


@dataclass(frozen=True)
class Figure:
    phase: str
    server: str
    latencies: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--requests", type=int, default=2000, help="N per measurement")
    parser.add_argument("--clients", type=int, default=8, help="M concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="bare/API alternations per phase")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per server")
    parser.add_argument("--accounts", type=int, default=16)
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: gunicorn.conf.py)")
    parser.add_argument("--threads", type=int, help="GUNICORN_THREADS (default: gunicorn.conf.py)")
    parser.add_argument(
        "--phases", default="paused,worker", help="paused (no worker), worker, or both"
    )
    parser.add_argument(
        "--profile", metavar="PREFIX", help="py-spy the API's workers: PREFIX-<db>.txt"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.clients, args.rounds, args.warmup, args.accounts = 60, 4, 1, 20, 2
    args.dbs = [db.strip() for db in args.db.split(",") if db.strip()]
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not set(args.dbs) <= {"sqlite", "postgresql"} or not args.dbs:
        parser.error("--db: sqlite, postgresql or both")
    if not set(args.phase_list) <= {"paused", "worker"} or not args.phase_list:
        parser.error("--phases: paused, worker or both")
    return args


# --- load ---------------------------------------------------------------------------------


def request_bytes(key: str, body: bytes) -> bytes:
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() == "close"


async def _load(
    port: int, requests: list[bytes], n: int, clients: int
) -> tuple[list[float], float]:
    """n requests (round robin over `requests`) on `clients` keep-alive connections; the
    latency of each and the wall time of all. Any answer but 202 stops the run."""
    latencies: list[float] = []
    issued = iter(range(n))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in issued:
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body, close = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status != 202:
                    raise RuntimeError(f"answer {status}: {body[:500]!r}")
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


def measure(phase: str, server: str, port: int, requests: list[bytes], n: int, m: int) -> Figure:
    latencies, seconds = asyncio.run(_load(port, requests, n, m))
    return Figure(phase, server, latencies, seconds)


# --- setup --------------------------------------------------------------------------------


def setup_accounts(api: httpx.Client, count: int) -> list[str]:
    """`count` active accounts on the bench plan with plenty of credits; their API keys."""
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    _ok(api.post("/v1/admin/plans", json=BENCH_PLAN, headers=admin), 201)
    keys = []
    for i in range(count):
        email = f"admission{i}@example.com"
        body = _ok(api.post("/v1/auth/register", json={"email": email, "password": "pw-bench-1"}))
        account_id = body["account"]["id"]
        patch = {"plan": BENCH_PLAN["slug"], "status": "active"}
        _ok(api.patch(f"/v1/admin/accounts/{account_id}", json=patch, headers=admin))
        grant = {"amount": 10_000_000, "reason": "bench"}
        _ok(api.post(f"/v1/admin/accounts/{account_id}/credits", json=grant, headers=admin))
        keys.append(body["api_key"])
    return keys


def _ok(response: httpx.Response, *expected: int) -> dict[str, object]:
    if response.status_code not in (expected or (200, 201)):
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    answer: dict[str, object] = response.json()
    return answer


@contextmanager
def servers(env: dict[str, str], log: Path) -> Iterator[tuple[int, int, int]]:
    """The API and the bare app, each under gunicorn with gunicorn.conf.py: the API's
    master pid and both ports."""
    api, api_port = start_gunicorn([], env, log=log)
    try:
        bare, bare_port = start_gunicorn([], env, "bench.bare_app:create_app()", log=log)
        try:
            yield api.pid, api_port, bare_port
        finally:
            stop_group(bare)
    finally:
        stop_group(api)


@contextmanager
def sampling(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy on gunicorn `pid` and its workers while the block runs (nothing if `out`
    is None): samples of the thread holding the GIL, i.e. where the CPU goes (waits for
    a lock or a socket do not show); collapsed stacks appended to `out`."""
    if out is None:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    part = out.with_suffix(f".{time.monotonic_ns()}")
    process = subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--gil",
         "--rate", "200", "--nonblocking", "--output", str(part)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
        if part.exists():
            with out.open("a") as collected:
                collected.write(part.read_text())
            part.unlink()


# py-spy's "name (path/to/module.py:123)" -> "name (module.py)": one row per function.
_FRAME = re.compile(r"^(.*?) \((?:.*/)?([^/:]+)(?::\d+)?\)$")
# Frames every request passes through (threads, gunicorn, Flask's dispatch): not listed.
_PLUMBING = ("threading.py", "thread.py", "gthread.py", "gunicorn_worker.py", "app.py")


def top_functions(collapsed: Path, count: int = 25) -> list[list[object]]:
    """Functions by inclusive share of the samples (each counted once per stack), with
    their own (self) share."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        frames = [_FRAME.sub(r"\1 (\2)", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    rows = [(f, n) for f, n in inclusive.most_common() if not f[:-1].endswith(_PLUMBING)]
    return [
        [frame, f"{100 * n / total:.1f}", f"{100 * own[frame] / total:.1f}"]
        for frame, n in rows[:count]
    ]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_backend(args: argparse.Namespace, db: str, url: str, tmp: Path) -> list[Figure]:
    from billing import catalog
    from billing.audit import audit
    from models.db import transaction
    from ops.cli import migrate

    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    figures: list[Figure] = []
    with ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        sim_url = stack.enter_context(simulated_provider())
        samples = tmp / f"prometheus-{db}"
        samples.mkdir()
        env = {
            "DATABASE_URL": url,
            "REDIS_URL": redis_server.url,
            "CELERY_BROKER_URL": redis_server.url,
            "OPENAI_BASE_URL": sim_url + "/v1",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(samples),
            "AUTH_THROTTLE_ENABLED": "0",  # setup signs up every account from one address
            "WEBHOOK_ALLOW_PRIVATE_URLS": "1",
        }
        if args.workers:
            env["WEB_CONCURRENCY"] = str(args.workers)
        if args.threads:
            env["GUNICORN_THREADS"] = str(args.threads)
        api_pid, api_port, bare_port = stack.enter_context(servers(env, tmp / f"gunicorn-{db}.log"))
        profile = Path(f"{args.profile}-{db}.txt") if args.profile else None
        if profile is not None:
            profile.unlink(missing_ok=True)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as api:
            keys = setup_accounts(api, args.accounts)
        body = json.dumps(BODY).encode()
        requests = [request_bytes(key, body) for key in keys]
        ports = {"bare": bare_port, "api": api_port}
        for phase in args.phase_list:
            worker = None
            if phase == "worker":
                # The paused phase's messages would be a backlog: only new jobs run.
                redis.Redis.from_url(redis_server.url).delete(*QUEUES)
                worker = CeleryWorker(env, name="admission")
                worker.start()
            try:
                for server, port in ports.items():
                    measure(phase, server, port, requests, args.warmup, args.clients)
                for _ in range(args.rounds):
                    for server, port in ports.items():
                        with sampling(api_pid, profile if server == "api" else None):
                            figure = measure(
                                phase, server, port, requests, args.requests, args.clients
                            )
                        figures.append(figure)
            finally:
                if worker is not None:
                    worker.stop()
        with transaction(url) as session:
            violations = audit(session)
    print(f"{db}: audit: {violations}")
    if violations:
        raise SystemExit(1)
    if profile is not None and profile.exists():
        print(f"{db}: py-spy of the API workers during the API measurements ({profile}):")
        print_table(["function", "inclusive %", "self %"], top_functions(profile))
    return figures


def report(db: str, args: argparse.Namespace, figures: list[Figure]) -> None:
    rows = []
    summary: dict[tuple[str, str], tuple[float, float, float]] = {}
    for phase in args.phase_list:
        for server in ("bare", "api"):
            runs = [f for f in figures if f.phase == phase and f.server == server]
            joined = Figure(
                phase, server, [x for f in runs for x in f.latencies], sum(f.seconds for f in runs)
            )
            rounds = ", ".join(f"{f.rate:,.0f}" for f in runs)
            summary[phase, server] = (joined.rate, joined.percentile(0.5), joined.percentile(0.99))
            rows.append(
                [
                    f"{db} {phase}",
                    server,
                    len(joined.latencies),
                    joined.rate,
                    joined.percentile(0.5),
                    joined.percentile(0.99),
                    rounds,
                ]
            )
    print_table(
        ["db phase", "server", "requests", "req/s", "p50 ms", "p99 ms", "rounds req/s"],
        rows,
        left=2,
    )
    for phase in args.phase_list:
        bare, api = summary[phase, "bare"], summary[phase, "api"]
        print(
            f"{db} {phase}: api/bare req/s {api[0] / bare[0]:.2f}  "
            f"p50 {api[1] / bare[1]:.2f}x  p99 {api[2] / bare[2]:.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["ADMIN_TOKEN"] = ADMIN_TOKEN
    print(
        f"POST /v1/jobs: {args.requests} requests x {args.rounds} rounds per server and phase, "
        f"{args.clients} clients, {args.accounts} accounts; load average {load_average()}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="aijobs-admission-") as tmp:
        for db, url in each_backend(args.dbs, "admission"):
            results.append((db, run_backend(args, db, url, Path(tmp))))
    print()
    for db, figures in results:
        report(db, args, figures)
        print()
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
