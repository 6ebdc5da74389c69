"""Where a submission's CPU goes: `POST /v1/jobs` in one process, one thread, through
Flask's test client, against the bare endpoint (bench/bare_app.py) in the same run.

`bench.admission` measures the production server, but on a shared 2-core machine its
figures move by a third from run to run, and they cannot say which part of a request
costs what. Here there is no server, no client and no thread switching: the difference
to the bare endpoint is what our code costs per submission, and timers around the
stages of the path say where it goes (each stage includes the ones it calls; the SQL
lines are the time in the driver, per statement kind). Every check stays on, as in
`bench.admission` (same plan, same body); the rate limiter and the publish talk to a
real Redis, the database is a real SQLite file or PostgreSQL server.

    .venv/bin/python -m bench.admission_cpu                  # SQLite and PostgreSQL, ~1 min
    .venv/bin/python -m bench.admission_cpu --db sqlite --requests 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/admission_cpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import each_backend, print_table
from bench.admission import BENCH_PLAN, BODY
from bench.e2e_throughput import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parent.parent
Spent = defaultdict[str, float]
# (module, function): the stages timed, in the order a submission reaches them.
STAGES = (
    ("billing.accounts", "authenticate"),
    ("api.ratelimit", "enforce"),
    ("billing.submission", "submit_job"),
    ("billing.submission", "quote_job"),
    ("billing.ledger", "reserve_new_job"),
    ("billing.ledger", "reserve"),
    ("billing.submission", "admit"),
    ("api.jobs", "_enqueue"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--requests", type=int, default=2000, help="per round and app")
    parser.add_argument("--rounds", type=int, default=3, help="bare/API alternations")
    parser.add_argument("--accounts", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.accounts = 50, 1, 2
    args.dbs = [db.strip() for db in args.db.split(",") if db.strip()]
    if not args.dbs or not set(args.dbs) <= {"sqlite", "postgresql"}:
        parser.error("--db: sqlite, postgresql or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run(args)
        return
    # One process per database: settings, engines and the app are per process.
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for db in args.dbs:
        command = [sys.executable, "-m", "bench.admission_cpu", "--child", "--db", db]
        command += ["--requests", str(args.requests), "--rounds", str(args.rounds)]
        command += ["--accounts", str(args.accounts)]
        # The app's log lines (one per submission) are written, as in production, to a
        # file shown only if the run fails.
        with tempfile.TemporaryFile() as log:
            if subprocess.run(command, cwd=ROOT, stderr=log).returncode != 0:
                log.seek(0)
                sys.exit(f"bench.admission_cpu --db {db} failed:\n" + log.read().decode()[-4000:])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def run(args: argparse.Namespace) -> None:
    from ops.redis_server import RedisServer

    (db,) = args.dbs
    with (
        tempfile.TemporaryDirectory(prefix="aijobs-bench-") as tmp,
        RedisServer() as redis_server,
    ):
        for _, url in each_backend([db], "admission_cpu"):
            os.environ.update(
                {
                    "DATABASE_URL": url,
                    "REDIS_URL": redis_server.url,
                    "CELERY_BROKER_URL": redis_server.url,
                    "ADMIN_TOKEN": ADMIN_TOKEN,
                    "PROMETHEUS_MULTIPROC_DIR": tmp,
                    "AUTH_THROTTLE_ENABLED": "0",  # every account signs up from one address
                }
            )
            measure(db, url, args)


def measure(db: str, url: str, args: argparse.Namespace) -> None:
    from api.app import create_app
    from bench.bare_app import create_app as create_bare_app
    from billing import catalog
    from models.db import transaction
    from ops.cli import migrate

    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    api = create_app().test_client()
    bare = create_bare_app().test_client()
    body = json.dumps(BODY)
    headers = [
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for key in setup_accounts(api, args.accounts)
    ]

    def submit(n: int, client: Any = api) -> None:
        for i in range(n):
            response = client.post("/v1/jobs", data=body, headers=headers[i % len(headers)])
            if response.status_code != 202:
                raise RuntimeError(f"answer {response.status_code}: {response.get_data()[:500]!r}")

    submit(200)  # connections, caches
    submit(200, bare)
    figures: dict[str, list[tuple[float, float]]] = {"bare": [], "api": []}
    for _ in range(args.rounds):
        for name, client in (("bare", bare), ("api", api)):
            wall, cpu = time.perf_counter(), time.process_time()
            submit(args.requests, client)
            figures[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    # The breakdown in a round of its own: its timers cost a few percent.
    with timed_stages() as stages, timed_statements(url) as statements:
        submit(args.requests)
    report(db, args, figures, stages, statements)
    from billing.audit import audit

    with transaction(url) as session:
        print(f"{db}: audit: {audit(session)}")


def report(
    db: str,
    args: argparse.Namespace,
    figures: dict[str, list[tuple[float, float]]],
    stages: Spent,
    statements: Spent,
) -> None:
    def per_request(name: str, index: int) -> float:
        return 1000 * min(f[index] for f in figures[name]) / int(args.requests)

    print(f"\n{db}: {args.requests} submissions x {args.rounds} rounds per app, one thread")
    rows = [
        (name, per_request(name, 0), per_request(name, 1), 1 / per_request(name, 0) * 1000)
        for name in ("bare", "api")
    ]
    print_table(["app", "ms/request (best round)", "CPU ms/request", "req/s"], rows)
    bare, api = per_request("bare", 0), per_request("api", 0)
    cpu = per_request("api", 1)
    # The rest of the API's time is the database's and Redis's (their CPU, on one host).
    print(
        f"{db}: api/bare req/s {bare / api:.2f} ({api:.2f} ms vs {bare:.2f} ms a request; "
        f"this process's CPU {cpu:.2f} ms of it)"
    )
    n = args.requests
    stage_rows = [
        (f"{module}.{name}", 1000 * stages[f"{module}.{name}"] / n) for module, name in STAGES
    ]
    stage_rows += [
        (f"SQL x{count // n}: {text}", 1000 * seconds / n)
        for text, (seconds, count) in _by_time(statements)
    ]
    print_table(["stage (a round of its own; includes what it calls)", "ms/submission"], stage_rows)


def _by_time(statements: Spent) -> Iterator[tuple[str, tuple[float, int]]]:
    kinds = {key[1:] for key in statements if key.startswith("t")}
    for text in sorted(kinds, key=lambda k: -statements["t" + k]):
        yield text, (statements["t" + text], int(statements["n" + text]))


def setup_accounts(api: Any, count: int) -> list[str]:
    """`count` active accounts on the bench plan with plenty of credits; their API keys."""
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    _ok(api.post("/v1/admin/plans", json=BENCH_PLAN, headers=admin), 201)
    keys = []
    for i in range(count):
        email = f"cpu{i}@example.com"
        body = _ok(api.post("/v1/auth/register", json={"email": email, "password": "pw-bench-1"}))
        account_id = body["account"]["id"]
        patch = {"plan": BENCH_PLAN["slug"], "status": "active"}
        _ok(api.patch(f"/v1/admin/accounts/{account_id}", json=patch, headers=admin))
        grant = {"amount": 10_000_000, "reason": "bench"}
        _ok(api.post(f"/v1/admin/accounts/{account_id}/credits", json=grant, headers=admin))
        keys.append(body["api_key"])
    return keys


def _ok(response: Any, *expected: int) -> dict[str, Any]:
    if response.status_code not in (expected or (200, 201)):
        raise RuntimeError(f"{response.status_code} {response.get_data()[:500]!r}")
    answer: dict[str, Any] = response.get_json()
    return answer


@contextmanager
def timed_stages() -> Iterator[Spent]:
    """Seconds spent in each of STAGES (wrapped where callers look them up)."""
    spent: Spent = defaultdict(float)
    originals: list[tuple[Any, str, Any]] = []
    for module_name, name in STAGES:
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        originals.append((module, name, original))
        setattr(module, name, _timer(original, f"{module_name}.{name}", spent))
    # Callers that imported a stage by name hold the original: rebind theirs too.
    for caller_name in ("api.security", "api.jobs", "billing.submission"):
        caller = importlib.import_module(caller_name)
        for module, name, original in originals[: len(STAGES)]:
            if getattr(caller, name, None) is original:
                setattr(caller, name, getattr(module, name))
                originals.append((caller, name, original))
    try:
        yield spent
    finally:
        for module, name, original in reversed(originals):
            setattr(module, name, original)


def _timer(function: Callable[..., Any], key: str, spent: Spent) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - started

    return timed


@contextmanager
def timed_statements(url: str) -> Iterator[Spent]:
    """Per statement kind (its first words): "t"+kind -> seconds in the driver, "n"+kind
    -> how many."""
    from sqlalchemy import event

    from models.db import get_engine

    engine = get_engine(url)
    seen: Spent = defaultdict(float)

    def before(conn: Any, _cursor: Any, _statement: str, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        kind = " ".join(statement.split()[:4])[:60]
        seen["t" + kind] += time.perf_counter() - conn.info.pop("bench_started")
        seen["n" + kind] += 1

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


if __name__ == "__main__":
    main()
