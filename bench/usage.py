"""Usage analytics at a million rows: the API against raw SQL on the same PostgreSQL data.

One account among `--accounts` (default 1,000) owns `--own` (200,000) of `--rows`
(1,000,000) usage rows, spread over the last 90 days and interleaved in time with the
other accounts' rows (as a live table is). Rows and their jobs are bulk-loaded with COPY
(untimed), then VACUUM ANALYZE. Timed, each `--samples` times, alternating:

  summary   GET /v1/usage/summary          vs  raw: SUM(credits) since the period start
  insights  GET /v1/usage/insights?days=90 vs  raw: the same GROUP BY (day, operation,
                                               site, model, source) as one SQL statement
  logs      GET /v1/usage/logs?operation=..&site_id=..&limit=50
                                           vs  raw: the same filtered page in SQL

The API side goes through the Flask test client: key auth, validation, the billing
query, the Python roll-up and JSON. The raw side is psycopg on its own connection.
Then the CSV export of the account's rows (GET /v1/usage/logs?format=csv), streamed,
with the process's peak RSS before and after it. EXPLAIN (ANALYZE, BUFFERS) of the
app's insights and logs statements is printed at the end.

    .venv/bin/python -m bench.usage              # ~3-5 min on 2 cores (loading is most)
    .venv/bin/python -m bench.usage --quick      # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/usage.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench import print_table
from ops.postgres_server import PostgresServer

ADMIN_TOKEN = "bench-admin-token"
OPERATIONS = {
    "clustering": ("gpt-4o-mini", {"keywords": ["running shoes", "trail shoes"]}),
    "idea_generation": ("gpt-4o", {"cluster": {"name": "Running", "keywords": ["x"]}}),
    "content_generation": ("gpt-4.1", {"title": "How to choose running shoes"}),
    "image_prompt_extraction": ("gpt-4o-mini", {"text": "A runner at dawn."}),
    "image_generation": ("dall-e-3", {"prompt": "a runner on a trail"}),
}
IMAGE_MODELS = ("hidream-full", "dall-e-3", "gpt-image-1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage rows in all")
    parser.add_argument("--own", type=int, default=200_000, help="rows of the measured account")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts in all")
    parser.add_argument("--samples", type=int, default=40, help="timed requests per endpoint")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.own, args.accounts, args.samples = 20_000, 5_000, 20, 5
    if not 0 < args.own <= args.rows or args.accounts < 2 or args.samples < 2:
        parser.error("need 0 < --own <= --rows, --accounts >= 2 and --samples >= 2")
    return args


# --- loading ---------------------------------------------------------------------------


def copy_rows(conninfo: str, target: str, target_sites: list[str], args: argparse.Namespace):
    """Accounts, sites, jobs and usage rows by COPY, then VACUUM ANALYZE; returns seconds.

    Foreign-key triggers are off for the load (`session_replication_role = replica`): the
    rows are consistent by construction, and checking 3 million references would take
    longer than the COPY itself.
    """
    started = time.perf_counter()
    now = datetime.now(UTC)
    others = [f"acc_bench{i:06d}" for i in range(args.accounts - 1)]
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        plan_id = cur.execute("SELECT id FROM plans WHERE slug = 'growth'").fetchone()[0]
        with cur.copy(
            "COPY accounts (id, name, plan_id, status, credits, reserved_credits, "
            "usage_ahrefs_queries, created_at) FROM STDIN"
        ) as copy:
            for account in others:
                copy.write_row((account, account, plan_id, "active", 0, 0, 0, now))
        with cur.copy("COPY sites (id, account_id, name, created_at) FROM STDIN") as copy:
            for account in others:
                copy.write_row((_site_of(account), account, "blog", now))
        # Two passes over the same seeded stream: one COPY at a time per connection.
        with cur.copy(
            "COPY jobs (id, account_id, site_id, operation, input, model, status, "
            "reserved_credits, credits_charged, attempts, created_at, automation_id) FROM STDIN"
        ) as copy:
            for job, _ in _stream(now, target, target_sites, others, args):
                copy.write_row(job)
        with cur.copy(
            "COPY credit_usage_logs (account_id, job_id, site_id, operation, model, tokens_in, "
            "tokens_out, images, credits, cost_usd, items_created, created_at, automation_id) "
            "FROM STDIN"
        ) as copy:
            for _, row in _stream(now, target, target_sites, others, args):
                copy.write_row(row)
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def _site_of(account: str) -> str:
    return f"site_{account[4:]}"


def _stream(
    now: datetime, target: str, target_sites: list[str], others: list[str], args: argparse.Namespace
) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(job row, usage row) in time order over the last 90 days; each row is the measured
    account's with probability own/rows, else a random other account's."""
    rng = random.Random(14)
    inputs = {name: json.dumps(job_input) for name, (_, job_input) in OPERATIONS.items()}
    names = list(OPERATIONS)
    span = 90 * 86400 - 3600
    share = args.own / args.rows
    for i in range(args.rows):
        mine = rng.random() < share
        account = target if mine else others[rng.randrange(len(others))]
        site = target_sites[rng.randrange(len(target_sites))] if mine else _site_of(account)
        operation = names[i % len(names)]
        image = operation == "image_generation"
        model = IMAGE_MODELS[rng.randrange(3)] if image else OPERATIONS[operation][0]
        created = now - timedelta(seconds=span * (args.rows - i) / args.rows)
        credits = rng.randint(1, 40)
        job_id = f"job_b{i:023d}"
        tokens_in, tokens_out = (0, 0) if image else (rng.randint(50, 900), credits * 90)
        cost = Decimal(rng.randint(1, 200_000)) / 1_000_000
        automation = f"auto_{i // 50:06d}" if rng.random() < 0.3 else None
        yield (
            (job_id, account, site, operation, inputs[operation], model, "succeeded",
             credits + 5, credits, 1, created, automation),
            (account, job_id, site, operation, model, tokens_in, tokens_out, 2 if image else 0,
             credits, cost, rng.randint(1, 5), created, automation),
        )  # fmt: skip


# --- timing ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed_pairs(
    samples: int, api: Callable[[], None], raw: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """Alternate the API call and its raw query, milliseconds each (2 untimed first)."""
    api()
    raw()
    api_ms, raw_ms = [], []
    for _ in range(samples):
        for call, out in ((api, api_ms), (raw, raw_ms)):
            start = time.perf_counter()
            call()
            out.append((time.perf_counter() - start) * 1000)
    return api_ms, raw_ms


RAW_SUMMARY = (
    "SELECT coalesce(sum(credits), 0) FROM credit_usage_logs "
    "WHERE account_id = %(a)s AND created_at >= %(start)s"
)
# A plain GROUP BY of the same figures, as one would write it by hand.
RAW_INSIGHTS = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, operation, site_id, model,
       automation_id IS NOT NULL AS automated, count(*), sum(credits), sum(items_created),
       sum(images), sum(cost_usd), sum(tokens_in), sum(tokens_out)
FROM credit_usage_logs
WHERE account_id = %(a)s AND created_at >= %(start)s AND created_at < %(end)s
GROUP BY 1, 2, 3, 4, 5
"""
RAW_LOGS = """
SELECT u.*, j.input FROM credit_usage_logs u JOIN jobs j ON j.id = u.job_id
WHERE u.account_id = %(a)s AND u.operation = %(op)s AND u.site_id = %(site)s
ORDER BY u.created_at DESC, u.id DESC LIMIT 51
"""


def _ok(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.get_json()
    if response.status_code >= 300:
        raise RuntimeError(f"{response.status_code}: {body}")
    return body


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on kill too
    with ExitStack() as stack:
        server = stack.enter_context(PostgresServer(dbname="aijobs_bench_usage"))
        os.environ.update(
            {
                "DATABASE_URL": server.url,
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "RATE_LIMITS_ENABLED": "0",
                "AUTH_THROTTLE_ENABLED": "0",
            }
        )
        from api.app import create_app
        from billing import catalog, usage
        from models.db import dispose_engines, get_engine, transaction
        from ops.cli import migrate

        stack.callback(dispose_engines)
        migrate(server.url)
        with transaction(server.url) as session:
            catalog.seed(session)
        app = create_app()
        logging.getLogger().setLevel(logging.WARNING)
        client = app.test_client()
        registered = client.post(
            "/v1/auth/register", json={"email": "bench@example.com", "password": "bench pw 1"}
        ).get_json()
        key, target = registered["api_key"], registered["account"]["id"]
        headers = {"Authorization": f"Bearer {key}"}
        _ok(
            client.patch(
                f"/v1/admin/accounts/{target}",
                json={"plan": "growth", "status": "active"},
                headers={"X-Admin-Token": ADMIN_TOKEN},
            )
        )
        sites = [
            _ok(client.post("/v1/sites", json={"name": f"site {n}"}, headers=headers))["id"]
            for n in range(3)
        ]
        print(
            f"rows={args.rows:,} own={args.own:,} accounts={args.accounts:,} "
            f"samples={args.samples}",
            flush=True,
        )
        load_seconds = copy_rows(server.conninfo, target, sites, args)
        print(f"loaded in {load_seconds:.1f} s (COPY + VACUUM ANALYZE)", flush=True)

        raw_conn = stack.enter_context(psycopg.connect(server.conninfo, autocommit=True))
        # The same allowance the app's insights transaction takes (hash, not sort).
        raw_conn.execute(f"SET work_mem = '{usage.INSIGHTS_WORK_MEM}'")
        now = datetime.now(UTC)
        today = now.date()
        span_start = datetime.combine(today - timedelta(days=89), datetime.min.time(), UTC)
        span_end = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
        period_start = raw_conn.execute(
            "SELECT period_start FROM accounts WHERE id = %s", (target,)
        ).fetchone()[0]
        params = {"a": target, "start": span_start, "end": span_end}

        def get(path: str) -> Callable[[], None]:
            def call() -> None:
                response = client.get(path, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.get_json()}")

            return call

        def raw(sql: str, values: dict[str, Any]) -> Callable[[], None]:
            return lambda: raw_conn.execute(sql, values).fetchall() and None

        logs_path = f"/v1/usage/logs?operation=content_generation&site_id={sites[1]}&limit=50"
        statements = app_statements(usage, target, sites[1], now)
        with get_engine(server.url).connect() as conn:
            same = statements["insights (90 days)"].compile(dialect=conn.dialect)
        cases = {
            "summary": (get("/v1/usage/summary"), raw(RAW_SUMMARY, {**params,
                                                                    "start": period_start})),
            "insights 90d": (get("/v1/usage/insights?days=90"), raw(RAW_INSIGHTS, params)),
            "insights 90d vs its own SQL": (
                get("/v1/usage/insights?days=90"),
                raw(str(same), same.params),
            ),
            "logs page (filtered)": (
                get(logs_path),
                raw(RAW_LOGS, {"a": target, "op": "content_generation", "site": sites[1]}),
            ),
        }  # fmt: skip
        results = []
        for name, (api_call, raw_call) in cases.items():
            api_ms, raw_ms = timed_pairs(args.samples, api_call, raw_call)
            p95_api, p95_raw = percentile(api_ms, 0.95), percentile(raw_ms, 0.95)
            results.append(
                [name, statistics.median(api_ms), p95_api, statistics.median(raw_ms), p95_raw,
                 f"{statistics.median(api_ms) / statistics.median(raw_ms):.2f}",
                 f"{p95_api / p95_raw:.2f}"]
            )  # fmt: skip
            print(f"{name}: api p95 {p95_api:.1f} ms, raw p95 {p95_raw:.1f} ms", flush=True)

        insights = client.get("/v1/usage/insights?days=90", headers=headers).get_json()
        raw_total = raw_conn.execute(
            "SELECT count(*), sum(credits) FROM credit_usage_logs "
            "WHERE account_id = %(a)s AND created_at >= %(start)s AND created_at < %(end)s",
            params,
        ).fetchone()
        agree = (insights["totals"]["jobs"], insights["totals"]["credits"]) == tuple(raw_total)
        timeline_sum = sum(point["credits"] for point in insights["timeline"])

        rss_before, current_before = peak_rss_mb(), current_rss_mb()
        started = time.perf_counter()
        response = client.get("/v1/usage/logs?format=csv", headers=headers, buffered=False)
        lines = size = 0
        current_max = current_before
        for chunk in response.response:
            lines += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
            size += len(chunk)
            current_max = max(current_max, current_rss_mb())
        response.close()
        csv_seconds = time.perf_counter() - started
        rss_after = peak_rss_mb()

        print()
        print_table(
            ["endpoint", "api p50 ms", "api p95 ms", "raw p50 ms", "raw p95 ms", "p50 ratio",
             "p95 ratio"],
            results,
        )  # fmt: skip
        print()
        print(
            f"insights totals agree with raw SQL: {agree} (jobs {raw_total[0]:,}, credits "
            f"{raw_total[1]:,}); timeline sum == total: {timeline_sum == raw_total[1]}"
        )
        print(
            f"csv export: {lines - 1:,} rows ({size / 2**20:.1f} MiB) in {csv_seconds:.1f} s "
            f"({(lines - 1) / csv_seconds:,.0f} rows/s); peak RSS before {rss_before:.1f} MiB, "
            f"after {rss_after:.1f} MiB; RSS during the stream {current_before:.1f} -> max "
            f"{current_max:.1f} MiB"
        )
        print()
        explain(server.url, statements)
        (own_rows,) = raw_conn.execute(
            "SELECT count(*) FROM credit_usage_logs WHERE account_id = %s", (target,)
        ).fetchone()
        print(f"csv rows == the account's usage rows ({own_rows:,}): {lines - 1 == own_rows}")
        ok = agree and timeline_sum == raw_total[1] and lines - 1 == own_rows
        print("checks:", "ok" if ok else "FAILED")
        return 0 if ok else 1


def app_statements(usage: Any, target: str, site: str, now: datetime) -> dict[str, Any]:
    """The statements the app sends for the 90-day insights and the filtered logs page."""
    span = usage.window(UTC, now, days="90", start=None, end=None)
    where = usage.LogFilter(operation="content_generation", site_id=site)
    return {
        "insights (90 days)": usage.insight_query(target, span),
        "logs page (operation + site, 50 rows)": usage.log_query(target, where).limit(51),
    }


def explain(url: str, statements: dict[str, Any]) -> None:
    """The plans PostgreSQL chose for the app's own statements, in the app's settings."""
    from billing.usage import allow_hash_aggregate
    from models.db import transaction

    with transaction(url) as session:
        allow_hash_aggregate(session)
        conn = session.connection()
        for title, statement in statements.items():
            compiled = statement.compile(dialect=conn.dialect)
            plan = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + str(compiled), compiled.params
            )
            print(f"EXPLAIN {title}:")
            for (line,) in plan:
                print("   ", line)


if __name__ == "__main__":
    sys.exit(main())
