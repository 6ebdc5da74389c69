"""`make run` for real: the supervisor brings up Redis, the provider, gunicorn, a worker,
beat and Flower; a job of every operation succeeds over HTTP; Flower wants credentials;
the stack's own ports are no webhook target; a crashed child is restarted and one that
keeps crashing stops the stack; SIGTERM to the process group (as `make` delivers it) is a
graceful stop, and jobs still queued then run after the next start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from billing.audit import audit
from models import Job
from models.db import transaction
from ops.ports import free_port, port_is_free
from ops.redis_server import RedisServer
from tests.e2e.test_jobs_e2e import JOBS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CLUSTER = {"operation": "clustering", "input": {"keywords": ["running shoes", "trail shoes"]}}
RESTART_LIMIT = 3
# What `make` does with a SIGTERM sent to its process group: the stack gets the group's
# copy, and make forwards its own to it.
MAKE_LIKE = (
    'trap "kill -TERM $child 2>/dev/null" TERM INT; "$@" & child=$!; wait $child; wait $child'
)


class Stack:
    def __init__(
        self,
        var: Path,
        env: dict[str, str] | None = None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        self.var = var
        self.api_port, self.flower_port = ports or (free_port(), free_port())
        self.database_url = f"sqlite:///{var / 'stack.db'}"
        clean = {
            key: value
            for key, value in os.environ.items()
            if key
            not in {
                "DATABASE_URL",
                "REDIS_URL",
                "CELERY_BROKER_URL",
                "OPENAI_BASE_URL",
                "OPENAI_API_KEY",
                "ADMIN_TOKEN",
                "WEBHOOK_DENY_PORTS",
                "FLOWER_PASSWORD",
            }
        }
        clean |= {
            "API_PORT": str(self.api_port),
            "FLOWER_PORT": str(self.flower_port),
            "STACK_VAR_DIR": str(var),
            "DATABASE_URL": self.database_url,
            "ADMIN_TOKEN": "stack-admin",
            "RATE_LIMITS_ENABLED": "0",
            "SWEEP_INTERVAL_SECONDS": "2",  # beat's every-minute entries, every 2 s here
            **(env or {}),
        }
        # Under a shell that forwards signals like make, all in one new process group.
        self.process = subprocess.Popen(
            ["sh", "-c", MAKE_LIKE, "sh", sys.executable, "-m", "ops.stack"],
            cwd=ROOT,
            env=clean,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("export API="):
                self.ready.set()

    def wait_ready(self) -> Stack:
        if not self.ready.wait(120):
            self.stop()
            pytest.fail("make run did not come up:\n" + "".join(self.output[-60:]))
        return self

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def flower(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def flower_auth(self) -> tuple[str, str]:
        found = re.search(r"\(user (\S+), password (\S+)\)", "".join(self.output))
        assert found, "no Flower credentials in the banner"
        return found[1], found[2]

    def pid(self, name: str) -> int:
        """The pid of the child's current process, from the supervisor's log."""
        pids = re.findall(rf"\[stack\] (?:re)?started {name} \(pid (\d+)\)", "".join(self.output))
        assert pids, f"no pid logged for {name}"
        return int(pids[-1])

    def wait_for_line(self, text: str, since: int = 0, timeout: float = 30) -> None:
        """Until a line from index `since` on contains `text`."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output[since:]):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{text!r} not in output:\n" + "".join(self.output[-40:]))
            time.sleep(0.1)

    def terminate_group(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.terminate_group()
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    """The module's stack uses this Redis (REDIS_URL), so a test can stop it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, broker: RedisServer) -> Iterator[Stack]:
    env = {
        "REDIS_URL": broker.url,
        "STACK_RESTART_LIMIT": str(RESTART_LIMIT),
        "STACK_BACKOFF_SECONDS": "0.5",
    }
    running = Stack(tmp_path_factory.mktemp("stack"), env).wait_ready()
    yield running
    running.stop()


def register(client: httpx.Client, email: str) -> dict[str, str]:
    response = client.post("/v1/auth/register", json={"email": email, "password": "long enough"})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


def _wait(client: httpx.Client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def assert_audit_clean(database_url: str) -> None:
    with transaction(database_url) as session:
        assert audit(session) == []


def test_make_run_serves_every_operation(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        headers = register(client, "stack@example.com")
        for operation, job_input in JOBS.items():
            before = client.get("/v1/account", headers=headers).json()["credits"]
            submitted = client.post(
                "/v1/jobs", json={"operation": operation, "input": job_input}, headers=headers
            )
            assert submitted.status_code == 202, submitted.text
            job = _wait(client, headers, submitted.json()["id"])
            assert job["status"] == "succeeded", job
            assert 0 < job["credits_charged"] <= job["reserved_credits"]
            after = client.get("/v1/account", headers=headers).json()["credits"]
            assert after["available"] == before["available"] - job["credits_charged"]
            assert after["reserved"] == 0
        deductions = [
            t
            for t in client.get("/v1/credits/transactions?limit=100", headers=headers).json()[
                "data"
            ]
            if t["type"] == "deduction"
        ]
        assert len(deductions) == len(JOBS)
        # One scrape of the API has every process's samples (gunicorn and the worker).
        scraped = client.get("/metrics").text
        for operation in JOBS:
            assert 'celery_task_succeeded_total{hostname="' in scraped
            assert f'name="tasks.{operation}"' in scraped
        assert (
            'aijobs_jobs_submitted_total{operation="clustering",plan="free-trial"} 1.0' in scraped
        )
    assert_audit_clean(stack.database_url)


def test_flower_wants_credentials_and_lists_the_worker_from_the_first_view(stack: Stack) -> None:
    """Flower starts after the worker answers, so its first inspection (no refresh) has
    the worker and its queues; without the banner's credentials, 401 (bar /healthcheck)."""
    assert httpx.get(f"{stack.flower}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{stack.flower}/", timeout=10).status_code == 401
    assert httpx.post(f"{stack.flower}/api/worker/shutdown/x", timeout=10).status_code == 401
    assert httpx.get(f"{stack.flower}/healthcheck", timeout=10).status_code == 200
    wrong = httpx.get(f"{stack.flower}/api/workers", auth=("admin", "guess"), timeout=10)
    assert wrong.status_code == 401
    deadline = time.monotonic() + 30
    queues: set[str] = set()
    while time.monotonic() < deadline and not {"text", "image", "webhooks"} <= queues:
        workers = httpx.get(f"{stack.flower}/api/workers", auth=stack.flower_auth, timeout=10)
        assert workers.status_code == 200
        queues = {
            q["name"] for info in workers.json().values() for q in info.get("active_queues", [])
        }
        time.sleep(0.5)
    assert {"text", "image", "webhooks"} <= queues
    assert list(stack.var.glob(f"flower-{stack.flower_port}.db*"))  # persistent


def test_beat_runs_the_schedule_and_the_worker_runs_what_it_sends(stack: Stack) -> None:
    wanted = (
        "Scheduler: Sending due task sweep-expired-holds (tasks.periodic.sweep_expired_holds)",
        "periodic sweep: 0 expired hold(s) released",
        "periodic webhooks: 0 overdue webhook deliveries requeued",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = list(stack.output)
        if all(any(w in line for line in lines) for w in wanted):
            break
        time.sleep(0.2)
    beat = [line for line in lines if line.startswith("[beat]")]
    worker = [line for line in lines if line.startswith("[worker]")]
    assert any("Sending due task sweep-expired-holds" in line for line in beat), beat[-20:]
    assert any("periodic sweep: 0 expired hold(s) released" in line for line in worker), worker[
        -20:
    ]
    assert any("periodic webhooks:" in line for line in worker), worker[-20:]


def test_the_banner_shows_urls_credentials_and_a_copy_paste_session(stack: Stack) -> None:
    banner = "".join(stack.output)
    assert stack.api in banner
    assert str(stack.flower_port) in banner
    assert "stack-admin" in banner
    assert "/v1/jobs" in banner
    user, password = stack.flower_auth
    assert user == "admin"
    assert len(password) >= 20


def test_the_banner_exports_a_session_that_works(stack: Stack) -> None:
    """`export API=... KEY=... ADMIN_TOKEN=... ACCOUNT_ID=... SIM=...`: a dev account
    registered for this run, the admin token and the simulator, ready to paste."""
    exports = banner_exports(stack)
    assert set(exports) == {"API", "KEY", "ADMIN_TOKEN", "ACCOUNT_ID", "SIM"}
    assert (exports["API"], exports["ADMIN_TOKEN"]) == (stack.api, "stack-admin")
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        account = client.get("/v1/account", headers={"Authorization": f"Bearer {exports['KEY']}"})
        assert account.status_code == 200
        assert account.json()["id"] == exports["ACCOUNT_ID"]
        found = client.get(
            f"/v1/admin/accounts/{exports['ACCOUNT_ID']}", headers={"X-Admin-Token": "stack-admin"}
        )
        assert found.status_code == 200
    assert httpx.get(f"{exports['SIM']}/healthz", timeout=10).status_code == 200


def banner_exports(stack: Stack) -> dict[str, str]:
    line = next(line for line in stack.output if line.startswith("export API="))
    return dict(item.split("=", 1) for item in line.split()[1:])


def readme_blocks() -> list[str]:
    """The README's shell blocks marked `<!-- runnable ... -->`, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"<!-- runnable[^>]*-->\n```bash\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_commands_run_as_written(stack: Stack, tmp_path: Path) -> None:
    """Every runnable README block, in order, in one shell that pasted the banner's
    `export` line: any call the API refuses (curl --fail-with-body), any missing field or
    unset variable fails the test, naming the command."""
    blocks = readme_blocks()
    assert len(blocks) >= 10, "the README lost its runnable blocks"
    export = next(line for line in stack.output if line.startswith("export API=")).strip()
    script = tmp_path / "readme.sh"
    script.write_text(
        "set -euo pipefail\n"
        'curl() { command curl --fail-with-body --show-error --max-time 30 "$@"; }\n'
        f"{export}\n" + "\n".join(blocks)
    )
    done = subprocess.run(
        ["bash", "-x", str(script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:] + "\n--- stdout:\n" + done.stdout[-3000:]
    assert '"status": "cancelled"' in done.stdout or '"status":"cancelled"' in done.stdout
    assert (tmp_path / "usage.csv").read_text().startswith("id,created_at")
    assert_audit_clean(stack.database_url)


def test_webhooks_to_the_stacks_own_services_or_cloud_metadata_are_refused(
    stack: Stack, broker: RedisServer
) -> None:
    """`make run` allows private webhook URLs (development) but fills WEBHOOK_DENY_PORTS
    with what it started: Flower's API (which can stop the worker), Redis, the API."""
    refused = [
        f"http://127.0.0.1:{stack.flower_port}/api/worker/shutdown/worker@localhost",
        f"http://localhost:{stack.flower_port}/api/task/revoke/x",
        f"http://127.0.0.1:{broker.port}/",
        f"http://127.0.0.1:{stack.api_port}/v1/admin/accounts",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ]
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        headers = register(client, "hooks@example.com")
        before = client.get("/v1/account", headers=headers).json()["credits"]
        answers = {
            url: client.post("/v1/jobs", json={**CLUSTER, "webhook_url": url}, headers=headers)
            for url in refused
        }
        assert {url: r.status_code for url, r in answers.items()} == dict.fromkeys(refused, 422)
        assert all("webhook_url" in r.json()["error"]["fields"] for r in answers.values())
        assert client.get("/v1/account", headers=headers).json()["credits"] == before
        assert client.get("/v1/jobs", headers=headers).json()["data"] == []
        allowed = client.post(
            "/v1/jobs", json={**CLUSTER, "webhook_url": "http://127.0.0.1:9/hooks"}, headers=headers
        )
        assert allowed.status_code == 202  # the dev allowance itself is on
        _wait(client, headers, allowed.json()["id"])


def test_hostile_bodies_are_422_through_gunicorn(stack: Stack) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        headers = register(client, "bodies@example.com")
        answers = [
            client.post(
                "/v1/jobs", content=deep, headers=headers | {"content-type": "application/json"}
            ),
            client.post(
                "/v1/jobs",
                json={**CLUSTER, "input": {"keywords": ["nul\x00byte"]}},
                headers=headers,
            ),
            client.post("/v1/sites", json={"name": "\x00"}, headers=headers),
        ]
        assert [r.status_code for r in answers] == [422, 422, 422]
        assert [r.json()["error"]["code"] for r in answers] == ["invalid_request"] * 3
        assert client.get("/v1/jobs", headers=headers).json()["data"] == []
        too_long = client.get("/v1/jobs?" + "x" * 5000, headers=headers)
        assert too_long.status_code == 414
        assert too_long.json()["error"]["code"] == "uri_too_long"


def test_redis_stopped_is_503_not_500_and_the_stack_recovers(
    stack: Stack, broker: RedisServer
) -> None:
    with httpx.Client(base_url=stack.api, timeout=30) as client:
        headers = register(client, "outage@example.com")
        assert broker.proc is not None
        broker.proc.terminate()
        broker.proc.wait(10)
        try:
            submitted = client.post("/v1/jobs", json=CLUSTER, headers=headers)
            health = client.get("/healthz")
            others = [
                client.get("/v1/account", headers=headers),
                client.get("/v1/jobs", headers=headers),
                client.get("/v1/credits/transactions", headers=headers),
                client.post("/v1/sites", json={"name": "blog"}, headers=headers),
            ]
        finally:
            broker.restart()  # same port, as a restarted Redis would be

        assert submitted.status_code == 503
        assert submitted.json()["error"]["code"] == "broker_unavailable"
        assert health.status_code == 503
        assert health.json()["broker"] == "unavailable"
        assert health.json()["database"] == "ok"
        assert all(r.status_code < 500 for r in others), [r.text for r in others]
        account = client.get("/v1/account", headers=headers).json()
        assert account["credits"]["reserved"] == 0  # the refused job holds nothing
        deadline = time.monotonic() + 30
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the API did not see Redis come back"
            time.sleep(0.2)
        job = client.post("/v1/jobs", json=CLUSTER, headers=headers)
        assert job.status_code == 202
        assert _wait(client, headers, job.json()["id"])["status"] == "succeeded"
    assert_audit_clean(stack.database_url)


def test_a_killed_worker_is_restarted_and_the_stack_keeps_serving(stack: Stack) -> None:
    worker, mark = stack.pid("worker"), len(stack.output)
    os.killpg(worker, signal.SIGKILL)

    stack.wait_for_line("worker exited unexpectedly with code -9 (SIGKILL); restarting", mark)
    stack.wait_for_line("[stack] restarted worker (pid", mark)
    assert stack.pid("worker") != worker
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        headers = register(client, "after-crash@example.com")
        job = client.post("/v1/jobs", json=CLUSTER, headers=headers)
        assert job.status_code == 202
        assert _wait(client, headers, job.json()["id"])["status"] == "succeeded"
    assert stack.process.poll() is None
    assert_audit_clean(stack.database_url)


def test_a_child_crashing_repeatedly_stops_the_stack_with_a_clear_message(stack: Stack) -> None:
    """The last test on the module's stack: it ends it. Beat is killed each time it is
    back, until the supervisor gives up (RESTART_LIMIT crashes within the window)."""
    pids = [stack.pid(name) for name in ("api", "worker", "flower", "provider")]
    kills = 0
    while stack.process.poll() is None:
        beat = stack.pid("beat")
        pids.append(beat)
        os.killpg(beat, signal.SIGKILL)
        kills += 1
        deadline = time.monotonic() + 30
        while stack.pid("beat") == beat and stack.process.poll() is None:
            assert time.monotonic() < deadline, "beat was neither restarted nor given up on"
            time.sleep(0.1)

    assert stack.process.wait(60) == 1
    assert kills <= RESTART_LIMIT
    output = "".join(stack.output)
    assert (
        f"ERROR: beat exited unexpectedly with code -9 (SIGKILL): {RESTART_LIMIT} crashes "
        "within 60s, giving up" in output
    )
    assert "(crash 1; 3 within 60s stop the stack)" in output
    assert "all processes stopped" in output
    assert port_is_free("127.0.0.1", stack.api_port)
    assert port_is_free("127.0.0.1", stack.flower_port)
    assert [pid for pid in pids if _alive(pid)] == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _statuses(database_url: str) -> dict[str, str]:
    with transaction(database_url) as session:
        return {job_id: status for job_id, status in session.execute(select(Job.id, Job.status))}


def test_sigterm_to_the_group_is_graceful_and_queued_jobs_survive_a_restart(
    tmp_path: Path,
) -> None:
    """Jobs wait 2 s on the provider. SIGTERM to the group (twice, as make delivers it)
    while some run and the rest wait in Redis: the running ones finish, nothing is
    SIGKILLed, every port is freed. The next start (same ports, same var/) finds the
    waiting ones in Redis's append-only file, also after Redis is killed, and runs them."""
    first = Stack(tmp_path, {"SIM_LATENCY_MS": "2000"}).wait_ready()
    with httpx.Client(base_url=first.api, timeout=10) as client:
        headers = register(client, "graceful@example.com")
        ids = [
            client.post("/v1/jobs", json=CLUSTER, headers=headers).json()["id"] for _ in range(6)
        ]
        deadline = time.monotonic() + 30
        while "running" not in _statuses(first.database_url).values():
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.1)
    at_stop = _statuses(first.database_url)
    started = time.monotonic()
    first.terminate_group()

    assert first.process.wait(60) == 0
    took = time.monotonic() - started
    output = "".join(first.output)
    assert "received SIGTERM; stopping gracefully" in output
    assert "SIGKILL" not in output
    assert took < 30  # STACK_STOP_GRACE_SECONDS
    assert port_is_free("127.0.0.1", first.api_port)
    assert port_is_free("127.0.0.1", first.flower_port)
    after_stop = _statuses(first.database_url)
    running = [job for job, status in at_stop.items() if status == "running"]
    assert {after_stop[job] for job in running} == {"succeeded"}  # finished, not killed
    waiting = [job for job in ids if after_stop[job] == "queued"]
    assert waiting, f"every job ran before the stop: {after_stop}"

    second = Stack(tmp_path, ports=(first.api_port, first.flower_port)).wait_ready()
    try:
        mark = len(second.output)
        os.kill(second.pid("redis"), signal.SIGKILL)
        second.wait_for_line("[stack] restarted redis (pid", mark)
        deadline = time.monotonic() + 60
        while set(_statuses(second.database_url).values()) != {"succeeded"}:
            assert time.monotonic() < deadline, _statuses(second.database_url)
            time.sleep(0.2)
    finally:
        assert second.stop() == 0
    assert_audit_clean(second.database_url)
