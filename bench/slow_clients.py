"""`/healthz` latency while slow clients hold connections open, per gunicorn worker class.

The real server (gunicorn with gunicorn.conf.py) twice: with the repository's worker
class (api.gunicorn_worker.BufferingThreadWorker) and with stock gthread, everything
else equal. For each: the baseline (`/healthz` with no slow client), then the same with
N clients connected that each send one header line every 2 s. Prints the latency
percentiles and the ratio loaded/baseline per worker class.

    .venv/bin/python -m bench.slow_clients            # 50 clients, 10 s per phase
    .venv/bin/python -m bench.slow_clients --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ops.ports import free_port, wait_for_port
from ops.processes import stop_group
from ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
WORKERS = {
    "buffering (repo)": [],
    "stock gthread": ["--worker-class", "gthread"],
}
TIMEOUT = 5.0


def start_gunicorn(
    extra: list[str],
    env: dict[str, str],
    app: str = "api.app:create_app()",
    log: Path | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn with gunicorn.conf.py (as `make run`) on a free port, every worker booted;
    its stderr goes to `log` when given."""
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    errors = log.open("ab") if log else None
    process = subprocess.Popen(
        [
            str(gunicorn),
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            *extra,
            app,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=errors or subprocess.DEVNULL,
        start_new_session=True,
    )
    if errors:
        errors.close()  # the child has its own copy
    wait_for_port("127.0.0.1", port, timeout=30)
    for _ in range(4):  # every worker booted
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30, headers={"Connection": "close"})
    return process, port


def sample(port: int, seconds: float) -> tuple[list[float], int]:
    """Latencies of sequential /healthz calls (new connection each), and timeouts."""
    latencies, timeouts = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            httpx.get(
                f"http://127.0.0.1:{port}/healthz",
                timeout=TIMEOUT,
                headers={"Connection": "close"},
            )
            latencies.append(time.monotonic() - started)
        except httpx.TimeoutException:
            timeouts += 1
        time.sleep(0.1)
    return latencies, timeouts


def with_slow_clients(port: int, clients: int, seconds: float) -> tuple[list[float], int]:
    slow = []
    for n in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {n}\r\n".encode())
        slow.append(sock)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(2.0):
            for sock in slow:
                with contextlib.suppress(OSError):  # the server may have closed it
                    sock.sendall(b"X-More: 1\r\n")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        return sample(port, seconds)
    finally:
        stop.set()
        dripper.join()
        for sock in slow:
            sock.close()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="20 clients, 4 s per phase")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 20, 4.0

    rows = []
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        env = {
            "DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "REDIS_URL": redis_server.url,
            "CELERY_BROKER_URL": redis_server.url,
        }
        for name, extra in WORKERS.items():
            process, port = start_gunicorn(extra, env)
            try:
                base, base_timeouts = sample(port, args.seconds / 2)
                loaded, timeouts = with_slow_clients(port, args.clients, args.seconds)
            finally:
                stop_group(process)
            rows.append((name, base, base_timeouts, loaded, timeouts))

    print(f"/healthz with {args.clients} slow clients (one header line every 2 s), "
          f"{args.seconds:g} s; client timeout {TIMEOUT:g} s")  # fmt: skip
    print(f"{'worker':<18} {'phase':<9} {'answered':>8} {'timeouts':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")  # fmt: skip
    for name, base, base_timeouts, loaded, timeouts in rows:
        for phase, values, missed in (
            ("baseline", base, base_timeouts),
            ("slow", loaded, timeouts),
        ):
            print(
                f"{name:<18} {phase:<9} {len(values):>8} {missed:>8} "
                f"{percentile(values, 0.5) * 1000:>8.1f} {percentile(values, 0.95) * 1000:>8.1f} "
                f"{(max(values) if values else float('nan')) * 1000:>8.1f}"
            )
    print()
    for name, base, _, loaded, timeouts in rows:
        ratio = statistics.median(loaded) / statistics.median(base) if loaded and base else None
        shown = f"{ratio:.2f}" if ratio is not None else "n/a (nothing answered)"
        print(f"{name}: median slow/baseline = {shown}; timeouts under load = {timeouts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
