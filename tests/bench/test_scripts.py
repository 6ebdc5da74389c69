"""The benchmark scripts still run: each in smoke mode, as `make bench` would run it.

They start their own servers (PostgreSQL, Redis, provider, worker) and end by auditing
the ledger rows they wrote, so a run that exits 0 also proves the loops wrote a ledger
that balances. The figures themselves are not checked here: speed belongs in bench/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_ledger_bench_prints_both_ratios_on_both_backends() -> None:
    out = run_bench("bench.ledger")
    table_row = r"^(sqlite|postgresql)\s+(hot \(1\)|spread \(50\))\s+1\s+100\s.*\s(\d+)$"
    rows = re.findall(table_row, out, re.M)
    assert sorted(rows) == sorted(
        [
            (db, shape, "0")
            for db in ("sqlite", "postgresql")
            for shape in ("hot (1)", "spread (50)")
        ]
    )
    assert "ledger/raw" in out
    assert "VIOLATION" not in out


def test_sqlite_floor_prints_the_ceiling() -> None:
    out = run_bench("bench.sqlite_floor")
    ceiling = re.search(r"^200\s+[\d,.]+\s+[\d,.]+\s+([\d.]+)\s+[\d,.]+\s+([\d.]+)\s+0$", out, re.M)
    assert ceiling is not None, out
    assert 0 < float(ceiling.group(1)) < float(ceiling.group(2)) < 1


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_e2e_throughput_bench_runs_every_job_to_success(db: str) -> None:
    out = run_bench("bench.e2e_throughput", "--db", db)
    done = re.search(r"jobs succeeded: (\d+)/(\d+)", out)
    assert done is not None, out
    assert done.group(1) == done.group(2)
    assert "audit: []" in out


def test_budgets_bench_prints_each_loop_on_both_backends() -> None:
    out = run_bench("bench.budgets")
    rows = re.findall(r"^(sqlite|postgresql)\S*\s+(bare|no budget|budget)\s+20\s", out, re.M)
    assert sorted(rows) == sorted(
        (db, loop) for db in ("sqlite", "postgresql") for loop in ("bare", "no budget", "budget")
    )


def test_slow_clients_bench_measures_both_worker_classes() -> None:
    out = run_bench("bench.slow_clients")
    rows = re.findall(r"^(buffering \(repo\)|stock gthread)\s+(baseline|slow)\s+\d+", out, re.M)
    assert len(rows) == 4, out
    assert "median slow/baseline" in out


def test_usage_bench_times_each_endpoint_against_raw_sql_and_streams_the_csv() -> None:
    out = run_bench("bench.usage")
    rows = re.findall(r"^(summary|insights 90d|logs page \(filtered\))\s+[\d.,]+\s", out, re.M)
    assert sorted(set(rows)) == ["insights 90d", "logs page (filtered)", "summary"]
    assert "insights totals agree with raw SQL: True" in out
    assert re.search(r"csv export: [\d,]+ rows .* peak RSS before [\d.]+ MiB, after", out)
    assert out.rstrip().endswith("checks: ok")


def test_keyword_library_bench_prints_plans_and_both_ratios() -> None:
    out = run_bench("bench.keyword_library")
    for db in ("sqlite", "postgresql"):
        assert f"{db}: loaded 20,000 rows" in out
        rows = re.findall(rf"^{db}\s+.*\s(\d\.\d{{3}})\s+(\d\.\d{{3}})$", out, re.M)
        assert len(rows) == 14, out  # 7 shapes x (first page, page 10)
    assert "USING INDEX" in out  # SQLite's plans
    assert "Index Scan" in out  # PostgreSQL's plans
    assert "All three returned the same ids" in out


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_inflight_bench_prints_both_latencies_and_the_ratio(db: str) -> None:
    out = run_bench("bench.inflight", "--db", db)
    done = re.search(r"jobs succeeded: (\d+)/(\d+)", out)
    assert done is not None, out
    assert done.group(1) == done.group(2)
    assert re.search(r"^0 ms\s+20\s", out, re.M), out
    assert re.search(r"^500 ms\s+20\s", out, re.M), out
    assert "ratio 500 ms / 0 ms: end to end" in out
    assert "per-account caps do not bound these" in out
    assert "audit: []" in out


def test_admission_bench_prints_both_phases_and_the_ratios_on_both_backends() -> None:
    out = run_bench("bench.admission")
    for db in ("sqlite", "postgresql"):
        for phase in ("paused", "worker"):
            for server in ("bare", "api"):
                assert re.search(rf"^{db} {phase}\s+{server}\s+60\s", out, re.M), out
            assert re.search(
                rf"^{db} {phase}: api/bare req/s [\d.]+\s+p50 [\d.]+x\s+p99", out, re.M
            )
        assert f"{db}: audit: []" in out


def test_admission_cpu_bench_prints_the_ratio_and_the_stages_on_both_backends() -> None:
    out = run_bench("bench.admission_cpu")
    for db in ("sqlite", "postgresql"):
        assert re.search(rf"^{db}: api/bare req/s [\d.]+ \([\d.]+ ms vs [\d.]+ ms", out, re.M)
        assert f"{db}: audit: []" in out
    for stage in ("billing.accounts.authenticate", "billing.ledger.reserve", "api.jobs._enqueue"):
        assert len(re.findall(rf"^{re.escape(stage)}\s+[\d.]+$", out, re.M)) == 2, out
    assert re.search(r"^SQL x1: INSERT INTO jobs", out, re.M), out


def test_audit_bench_prints_time_and_rss_at_both_sizes_on_both_backends() -> None:
    out = run_bench("bench.audit")
    for db in ("sqlite", "postgresql"):
        rows = re.findall(
            rf"^{db}\s+([\d,]+)\s+[\d,]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s.*\s(\d+)$", out, re.M
        )
        assert rows == [("2,000", "0"), ("8,000", "0")], out
        assert re.search(rf"^{db}: large/small: jobs 4\.0x, audit time [\d.]+x", out, re.M), out
    assert "VIOLATION" not in out
