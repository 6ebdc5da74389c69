"""`make run`: the whole stack on embedded defaults, in the foreground.

Redis (embedded), the simulated provider, migrations + seed, then gunicorn, a Celery worker,
beat and Flower. Every child runs in its own process group and the supervisor polls them, so
one Ctrl-C stops everything, a crashed child takes the stack down loudly, and nothing is
left running either way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis

from ops.ports import free_port, port_is_free
from ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
# The interpreter's own bin dir, so `.venv/bin/python -m ops.stack` works without activation.
BIN = Path(sys.executable).parent
CELERY_APP = "workers.celery_app:celery"
STOP_GRACE_SECONDS = 10.0
HOST = "127.0.0.1"
_print_lock = threading.Lock()
# Health probes must never go through an HTTP(S)_PROXY from the developer's shell.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(name: str, message: str) -> None:
    """One line, prefixed, atomic with respect to the other children's lines."""
    with _print_lock:
        print(f"[{name}] {message}", flush=True)


class StackError(Exception):
    """A failure worth one clear line rather than a traceback; the stack exits 1."""


class Shutdown(Exception):
    """Ctrl-C or SIGTERM: a requested stop; the stack exits 0."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    reader: threading.Thread


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


def _pump(name: str, proc: subprocess.Popen[bytes]) -> None:
    """Reader thread: stream a child's merged stdout/stderr to ours, line by line."""
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        log(name, raw.decode(errors="replace").rstrip())


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the group? (Grandchildren count: gunicorn workers,
    celery pool processes.) Zombies are excluded because init may reap them lazily."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _env_port(env: dict[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None


class Stack:
    """Starts the children in dependency order and supervises them until told to stop."""

    def __init__(self) -> None:
        self.env: dict[str, str] = dict(os.environ)
        self.children: list[Child] = []
        self.redis: RedisServer | None = None
        self.stop_requested: str | None = None
        self.force_kill = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only set flags: raising here could interrupt a Popen and leak an untracked child.
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name
        else:
            self.force_kill = True

    def check(self) -> None:
        """Called from every wait loop: turns a signal or a dead child into an exception."""
        if self.stop_requested:
            raise Shutdown(self.stop_requested)
        for child in self.children:
            if (code := child.proc.poll()) is not None:
                raise StackError(f"{child.name} exited unexpectedly with {_describe_exit(code)}")
        if self.redis and self.redis.proc and (code := self.redis.proc.poll()) is not None:
            raise StackError(f"redis exited unexpectedly with {_describe_exit(code)}")

    def spawn(self, name: str, args: list[str]) -> Child:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: our Ctrl-C doesn't race our shutdown
        )
        reader = threading.Thread(target=_pump, args=(name, proc), name=f"pump-{name}")
        reader.daemon = True
        reader.start()
        child = Child(name, proc, reader)
        self.children.append(child)
        return child

    def run_once(self, name: str, args: list[str]) -> None:
        """A one-shot step (migrate, seed): fail fast with its output if it fails."""
        child = self.spawn(name, args)
        self.children.remove(child)  # exiting is its job, not a crash
        try:
            while child.proc.poll() is None:
                self.check()
                time.sleep(0.1)
        finally:
            if child.proc.poll() is None:
                _killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            child.reader.join(timeout=5)
        if child.proc.returncode != 0:
            raise StackError(
                f"`python {' '.join(args[1:])}` failed with code {child.proc.returncode}"
            )

    def wait_http(self, url: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                with _http.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise StackError(f"{what} did not answer {url} with 200 within {timeout:.0f}s")

    def tool(self, name: str) -> str:
        path = BIN / name
        if not path.exists():
            raise StackError(f"{path} not found; install the project first (`make run` does)")
        return str(path)

    def start(self) -> dict[str, str]:
        env = self.env
        api_port = _env_port(env, "API_PORT", 5000) or 5000
        flower_port = _env_port(env, "FLOWER_PORT", 5555) or 5555
        for name, port in (("API_PORT", api_port), ("FLOWER_PORT", flower_port)):
            if not port_is_free(HOST, port):
                raise StackError(f"{name} {port} is already in use; free it or set {name}=...")
        celery, gunicorn = self.tool("celery"), self.tool("gunicorn")

        if env.get("REDIS_URL"):
            client = redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=5)
            try:
                client.ping()
            except redis.RedisError as exc:
                raise StackError(f"REDIS_URL={env['REDIS_URL']} does not answer: {exc}") from exc
            finally:
                client.close()
        else:
            try:
                self.redis = RedisServer(port=_env_port(env, "REDIS_PORT", None)).start()
            except RuntimeError as exc:
                raise StackError(f"embedded Redis failed to start: {exc}") from exc
            env["REDIS_URL"] = self.redis.url
            log("stack", f"embedded redis at {self.redis.url} ({self.redis.executable})")

        if env.get("OPENAI_API_KEY"):
            env.setdefault("OPENAI_BASE_URL", "https://api.openai.com/v1")
            log("stack", "OPENAI_API_KEY is set: using the real provider, no simulator")
        else:
            sim_port = _env_port(env, "SIM_PORT", None) or free_port(HOST)
            if not port_is_free(HOST, sim_port):
                raise StackError(f"SIM_PORT {sim_port} is already in use")
            self.spawn("provider", [sys.executable, "-m", "simulator",
                                    "--host", HOST, "--port", str(sim_port)])  # fmt: skip
            self.wait_http(f"http://{HOST}:{sim_port}/healthz", "simulated provider", 30)
            env["OPENAI_BASE_URL"] = f"http://{HOST}:{sim_port}/v1"

        VAR.mkdir(exist_ok=True)
        env.setdefault("DATABASE_URL", f"sqlite:///{VAR / 'aijobs.db'}")
        env["ADMIN_TOKEN"] = env.get("ADMIN_TOKEN") or secrets.token_urlsafe(24)
        env.setdefault("WEBHOOK_ALLOW_PRIVATE_URLS", "1")  # dev stack: webhooks to localhost
        env["FLOWER_UNAUTHENTICATED_API"] = "1"
        env["PYTHONUNBUFFERED"] = "1"  # children's lines arrive as they are written
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)

        self.run_once("migrate", [sys.executable, "-m", "ops", "migrate"])
        self.run_once("seed", [sys.executable, "-m", "ops", "seed"])

        self.spawn("api", [gunicorn, "--workers", "2", "--bind", f"{HOST}:{api_port}",
                           "--access-logfile", "-", "api.app:create_app()"])  # fmt: skip
        self.spawn("worker", [celery, "-A", CELERY_APP, "worker", "-Q",
                              "text,image,webhooks,default", "--loglevel", "INFO",
                              "-n", "worker@%h"])  # fmt: skip
        self.spawn("beat", [celery, "-A", CELERY_APP, "beat", "--loglevel", "INFO",
                            "-s", str(VAR / "celerybeat-schedule")])  # fmt: skip
        self.spawn("flower", [celery, "-A", CELERY_APP, "flower", f"--port={flower_port}",
                              f"--address={HOST}"])  # fmt: skip

        api_url, flower_url = f"http://{HOST}:{api_port}", f"http://{HOST}:{flower_port}"
        self.wait_http(f"{api_url}/healthz", "API", 60)
        self.wait_http(f"{flower_url}/healthcheck", "Flower", 60)
        return {"api": api_url, "flower": flower_url}

    def banner(self, urls: dict[str, str]) -> None:
        env, api = self.env, urls["api"]
        job = (
            '{"operation":"clustering","input":{"keywords":'
            '["best running shoes","running shoes for women","trail running tips"]}}'
        )
        get = "python3 -c 'import sys,json;print(json.load(sys.stdin)[sys.argv[1]])'"
        text = f"""
==================================================================
 aijobs stack is up (Ctrl-C stops everything)
   API:         {api}
   Flower:      {urls["flower"]}
   Redis:       {env["REDIS_URL"]}
   Provider:    {env["OPENAI_BASE_URL"]}
   Database:    {env["DATABASE_URL"]}
   Admin token: {env["ADMIN_TOKEN"]}

 Try it:
API={api}; EMAIL="dev$(date +%s)@example.com"
KEY=$(curl -s -X POST "$API/v1/auth/register" -H 'Content-Type: application/json' \\
  -d "{{\\"email\\":\\"$EMAIL\\",\\"password\\":\\"correct-horse-battery\\"}}" \\
  | {get} api_key)
JOB=$(curl -s -X POST "$API/v1/jobs" -H "Authorization: Bearer $KEY" \\
  -H 'Content-Type: application/json' -d '{job}' | {get} id)
for i in 1 2 3 4 5 6 7 8 9 10; do
  curl -s "$API/v1/jobs/$JOB" -H "Authorization: Bearer $KEY"; echo; sleep 1
done
==================================================================
"""
        with _print_lock:
            print(text, flush=True)

    def stop_all(self) -> None:
        """SIGTERM every process group, wait up to 10 s, SIGKILL stragglers, then Redis."""
        for child in self.children:
            _killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        pending = list(self.children)
        while pending and time.monotonic() < deadline and not self.force_kill:
            time.sleep(0.1)
            for child in pending:
                child.proc.poll()  # reap the leader so it doesn't count as alive
            pending = [c for c in pending if _group_alive(c.proc.pid)]
        for child in pending:
            log("stack", f"{child.name} did not stop in time; sending SIGKILL")
            _killpg(child.proc.pid, signal.SIGKILL)
        for child in self.children:
            child.proc.wait()
            child.reader.join(timeout=5)
        if self.redis is not None:
            self.redis.stop()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        code = 1
        try:
            self.banner(self.start())
            while True:
                self.check()
                time.sleep(0.2)
        except Shutdown as exc:
            log("stack", f"received {exc}; stopping")
            code = 0
        except StackError as exc:
            log("stack", f"error: {exc}; stopping")
        finally:
            self.stop_all()
            log("stack", "all processes stopped")
        return code


def main() -> int:
    return Stack().run()


if __name__ == "__main__":
    sys.exit(main())
