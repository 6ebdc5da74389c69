"""`make run`: the whole stack on embedded defaults, in the foreground.

Redis (embedded, persisting to `var/` with an append-only file), the simulated provider,
migrations + seed, then gunicorn, a Celery worker, beat and Flower (behind basic auth,
once the worker answers). Every child runs in its own process group and the supervisor
polls them:

- A child that exits once the stack is up is restarted after a back-off (1 s, doubling,
  capped at 30 s); one that exits `STACK_RESTART_LIMIT` (5) times within
  `STACK_RESTART_WINDOW` (60) seconds stops the whole stack with a clear message, and so
  does a child that dies while the stack is starting (it would only fail again).
- SIGTERM, Ctrl-C, SIGHUP (the terminal closed) or SIGQUIT is a graceful stop: the API,
  worker, beat and Flower get SIGTERM and up to `STACK_STOP_GRACE_SECONDS` (30) to finish
  what they are doing (the worker its running jobs), then the provider, then Redis, which
  writes its file. SIGKILL only for what outlives the grace period, or at once on a second
  signal. The same signal twice within a second (the process group's and the copy `make`
  forwards) counts once. Output that has nowhere to go (a closed terminal) is dropped.
- Each child gets SIGTERM from the kernel if the supervisor dies without stopping it
  (SIGKILL, a crash; Linux's PR_SET_PDEATHSIG): nothing keeps serving, or holds var/'s
  Redis files, after the supervisor is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import redis
from sqlalchemy.engine import make_url

import logs
from ops.ports import free_port, port_is_free
from ops.processes import die_with_parent
from ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
# The interpreter's own bin dir, so `.venv/bin/python -m ops.stack` works without activation.
BIN = Path(sys.executable).parent
CELERY_APP = "workers.celery_app:celery"
HOST = "127.0.0.1"
BACKOFF_CAP_SECONDS = 30.0
# A second signal this soon after the first is the same request delivered twice.
DUPLICATE_SIGNAL_SECONDS = 1.0
INFRA_STOP_SECONDS = 5.0
# A graceful stop: Ctrl-C, `kill`, the terminal closing (HUP), Ctrl-\ (QUIT).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_print_lock = threading.Lock()
# Health probes must never go through an HTTP(S)_PROXY from the developer's shell.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(name: str, message: str) -> None:
    """One line, prefixed, atomic with respect to the other children's lines. Once the
    terminal is gone (the SIGHUP of a closed window), output goes to /dev/null: a write
    error must not cut the stop short, nor kill a reader thread a child's pipe needs."""
    with _print_lock:
        try:
            print(f"[{name}] {message}", flush=True)
        except OSError:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class StackError(Exception):
    """A failure worth one clear line rather than a traceback; the stack exits 1."""


class Shutdown(Exception):
    """Ctrl-C or SIGTERM: a requested stop; the stack exits 0."""


@dataclass(frozen=True)
class Policy:
    """Restart and stop timings; env vars let tests shorten them."""

    restart_limit: int
    restart_window: float
    backoff_start: float
    stop_grace: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Policy:
        def number(name: str, default: float) -> float:
            try:
                return float(env.get(name) or default)
            except ValueError:
                raise StackError(f"{name}={env[name]!r} is not a number") from None

        return cls(
            restart_limit=int(number("STACK_RESTART_LIMIT", 5)),
            restart_window=number("STACK_RESTART_WINDOW", 60),
            backoff_start=number("STACK_BACKOFF_SECONDS", 1),
            stop_grace=number("STACK_STOP_GRACE_SECONDS", 30),
        )


@dataclass
class Child:
    """A supervised process: `launch` (re)starts it and returns its process."""

    name: str
    launch: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes]
    infra: bool = False  # stopped after the app processes (they still need it)
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


def _pump(name: str, proc: subprocess.Popen[bytes], ready: tuple[str, threading.Event]) -> None:
    """Reader thread: stream a child's merged stdout/stderr to ours, line by line, and
    set `ready` once a line contains its marker."""
    assert proc.stdout is not None
    marker, event = ready
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        log(name, line)
        if marker and marker in line:
            event.set()


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


def _url_port(url: str, default: int) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


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
        self.var = Path(self.env.get("STACK_VAR_DIR") or ROOT / "var").resolve()
        self.policy = Policy.from_env(self.env)
        self.children: list[Child] = []
        self.redis: RedisServer | None = None
        self.up = False
        self.stop_requested: str | None = None
        self.stop_requested_at = 0.0
        self.force_kill = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only set flags: raising here could interrupt a Popen and leak an untracked child.
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name
            self.stop_requested_at = time.monotonic()
        elif time.monotonic() - self.stop_requested_at > DUPLICATE_SIGNAL_SECONDS:
            self.force_kill = True

    def check(self) -> None:
        """Called from every wait loop: a signal becomes `Shutdown`; a dead child is
        restarted on schedule, or becomes `StackError` when the policy gives up."""
        if self.stop_requested:
            raise Shutdown(self.stop_requested)
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
            elif (code := child.proc.poll()) is not None:
                self._crashed(child, code, now)

    def _crashed(self, child: Child, code: int, now: float) -> None:
        how = f"exited unexpectedly with {_describe_exit(code)}"
        if not self.up:
            raise StackError(f"{child.name} {how} while the stack was starting")
        _killpg(child.proc.pid, signal.SIGKILL)  # what the dead leader left behind
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > self.policy.restart_window:
            child.crashes.popleft()
        count, limit = len(child.crashes), self.policy.restart_limit
        window = self.policy.restart_window
        if count >= limit:
            raise StackError(
                f"{child.name} {how}: {count} crashes within {window:g}s, giving up. "
                f"Fix the cause (see the [{child.name}] lines above) and run it again"
            )
        delay = min(self.policy.backoff_start * 2 ** (count - 1), BACKOFF_CAP_SECONDS)
        log("stack", f"{child.name} {how}; restarting in {delay:g}s "
                     f"(crash {count}; {limit} within {window:g}s stop the stack)")  # fmt: skip
        child.restart_at = now + delay

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        try:
            child.proc = child.launch()
        except (OSError, RuntimeError) as exc:
            raise StackError(f"{child.name} could not be restarted: {exc}") from exc
        log("stack", f"restarted {child.name} (pid {child.proc.pid})")

    def popen(
        self, name: str, args: list[str], env: dict[str, str] | None = None, ready: str = ""
    ) -> tuple[subprocess.Popen[bytes], threading.Event]:
        """Start one process in its own group, its output streamed under `[name]`."""
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: our Ctrl-C doesn't race our shutdown
            preexec_fn=die_with_parent(),  # a single prctl: safe beside threads
        )
        event = threading.Event()
        reader = threading.Thread(
            target=_pump, args=(name, proc, (ready, event)), name=f"pump-{name}", daemon=True
        )
        reader.start()
        return proc, event

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, ready: str = ""
    ) -> tuple[Child, threading.Event]:
        """A supervised child; `ready` is a line its output prints once it serves."""
        proc, event = self.popen(name, args, env, ready)
        child = Child(name, lambda: self.popen(name, args, env)[0], proc)
        self.children.append(child)
        log("stack", f"started {name} (pid {proc.pid})")
        return child, event

    def run_once(self, name: str, args: list[str]) -> None:
        """A one-shot step (migrate, seed): fail fast with its output if it fails."""
        proc, _ = self.popen(name, args)
        try:
            while proc.poll() is None:
                self.check()
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode != 0:
            raise StackError(f"`python {' '.join(args[1:])}` failed with code {proc.returncode}")

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

    def wait_ready(self, event: threading.Event, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not event.wait(0.2):
            self.check()
            if time.monotonic() > deadline:
                raise StackError(f"{what} did not report ready within {timeout:.0f}s")

    def tool(self, name: str) -> str:
        path = BIN / name
        if not path.exists():
            raise StackError(f"{path} not found; install the project first (`make run` does)")
        return str(path)

    def start_redis(self) -> int:
        """The broker: REDIS_URL if given, else an embedded one persisting to var/."""
        env = self.env
        if env.get("REDIS_URL"):
            client = redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=5)
            try:
                client.ping()
            except redis.RedisError as exc:
                raise StackError(
                    logs.redact(f"REDIS_URL={env['REDIS_URL']} does not answer: {exc}")
                ) from exc
            finally:
                client.close()
            return _url_port(env["REDIS_URL"], 6379)
        # One data dir per API port: two copies side by side never share an append-only file.
        data_dir = self.var / f"redis-{env['API_PORT']}"
        try:
            server = RedisServer(port=_env_port(env, "REDIS_PORT", None), data_dir=data_dir)
            self.redis = server.start()
        except RuntimeError as exc:
            raise StackError(f"embedded Redis failed to start: {exc}") from exc
        assert server.proc is not None

        def relaunch() -> subprocess.Popen[bytes]:
            server.restart()
            assert server.proc is not None
            return server.proc

        self.children.append(Child("redis", relaunch, server.proc, infra=True))
        log("stack", f"started redis (pid {server.proc.pid})")
        env["REDIS_URL"] = server.url
        log("stack", f"embedded redis at {server.url} ({server.executable}), data in {data_dir}")
        return server.port

    def start(self) -> dict[str, str]:
        env = self.env
        api_port = _env_port(env, "API_PORT", 5000) or 5000
        flower_port = _env_port(env, "FLOWER_PORT", 5555) or 5555
        for name, port in (("API_PORT", api_port), ("FLOWER_PORT", flower_port)):
            if not port_is_free(HOST, port):
                raise StackError(f"{name} {port} is already in use; free it or set {name}=...")
        env["API_PORT"] = str(api_port)
        celery, gunicorn = self.tool("celery"), self.tool("gunicorn")
        self.var.mkdir(parents=True, exist_ok=True)
        stack_ports = {api_port, flower_port, self.start_redis()}

        if env.get("OPENAI_API_KEY"):
            env.setdefault("OPENAI_BASE_URL", "https://api.openai.com/v1")
            log("stack", "OPENAI_API_KEY is set: using the real provider, no simulator")
        else:
            if not env.get("STRIPE_API_KEY"):  # the simulator stands in for Stripe too
                env["STRIPE_API_KEY"] = "sk_test_simulated"
                env.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_" + secrets.token_urlsafe(24))
            sim_port = _env_port(env, "SIM_PORT", None) or free_port(HOST)
            if not port_is_free(HOST, sim_port):
                raise StackError(f"SIM_PORT {sim_port} is already in use")
            simulator = [sys.executable, "-m", "simulator", "--host", HOST, "--port", str(sim_port)]
            provider, _ = self.spawn("provider", simulator)
            provider.infra = True
            self.wait_http(f"http://{HOST}:{sim_port}/healthz", "simulated provider", 30)
            env["OPENAI_BASE_URL"] = f"http://{HOST}:{sim_port}/v1"
            stack_ports.add(sim_port)

        env.setdefault("DATABASE_URL", f"sqlite:///{self.var / 'aijobs.db'}")
        database = make_url(env["DATABASE_URL"])
        if database.get_backend_name() == "postgresql":
            stack_ports.add(database.port or 5432)
        env["ADMIN_TOKEN"] = env.get("ADMIN_TOKEN") or secrets.token_urlsafe(24)
        env.setdefault("WEBHOOK_ALLOW_PRIVATE_URLS", "1")  # dev stack: webhooks to localhost
        # ... but never to the stack's own services (Flower's API can stop the worker).
        denied = {p for p in env.get("WEBHOOK_DENY_PORTS", "").split(",") if p.strip()}
        env["WEBHOOK_DENY_PORTS"] = ",".join(sorted(denied | {str(p) for p in stack_ports}))
        env.setdefault("INVITE_TOKENS_IN_RESPONSE", "1")  # dev stack: invitation tokens shown
        env.pop("FLOWER_UNAUTHENTICATED_API", None)  # Flower's API is never open
        env["FLOWER_USER"] = env.get("FLOWER_USER") or "admin"
        env["FLOWER_PASSWORD"] = env.get("FLOWER_PASSWORD") or secrets.token_urlsafe(18)
        # Every process writes its metric samples here; the API's /metrics serves them all.
        samples = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or self.var / f"prometheus-{api_port}")
        shutil.rmtree(samples, ignore_errors=True)  # counters start again with the stack
        samples.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(samples)
        env["PYTHONUNBUFFERED"] = "1"  # children's lines arrive as they are written
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)

        self.run_once("migrate", [sys.executable, "-m", "ops", "migrate"])
        self.run_once("seed", [sys.executable, "-m", "ops", "seed"])

        self.spawn("api", [gunicorn, "-c", str(ROOT / "gunicorn.conf.py"),
                           "--bind", f"{HOST}:{api_port}", "api.app:create_app()"])  # fmt: skip
        _, worker_ready = self.spawn(
            "worker", [celery, "-A", CELERY_APP, "worker", "-Q",
                       "text,image,webhooks,default", "--loglevel", "INFO",
                       "-n", "worker@%h"], ready=" ready.")  # fmt: skip
        self.spawn("beat", [celery, "-A", CELERY_APP, "beat", "--loglevel", "INFO",
                            "-s", str(self.var / "celerybeat-schedule")])  # fmt: skip
        # After the worker answers, so Flower's first inspection (and first page) has it.
        self.wait_ready(worker_ready, "the Celery worker", 60)
        flower_auth = {"FLOWER_BASIC_AUTH": f"{env['FLOWER_USER']}:{env['FLOWER_PASSWORD']}"}
        self.spawn("flower", [celery, "-A", CELERY_APP, "flower", f"--port={flower_port}",
                              f"--address={HOST}", "--persistent=True",
                              f"--db={self.var / f'flower-{flower_port}.db'}"],
                   env=flower_auth)  # fmt: skip

        api_url, flower_url = f"http://{HOST}:{api_port}", f"http://{HOST}:{flower_port}"
        self.wait_http(f"{api_url}/healthz", "API", 60)
        self.wait_http(f"{flower_url}/healthcheck", "Flower", 60)
        self.up = True
        return {"api": api_url, "flower": flower_url}

    def dev_account(self, api: str) -> dict[str, str]:
        """Register an account for the banner's session, with an email unique to this run
        (the database under var/ outlives the stack): its key and id, or why not."""
        email = f"dev-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}@example.com"
        password = secrets.token_urlsafe(12)
        body = json.dumps({"email": email, "password": password}).encode()
        request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 API)
            f"{api}/v1/auth/register",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _http.open(request, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            return {"error": exc.read().decode(errors="replace")[:500]}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return {"error": str(exc)}
        return {
            "email": email,
            "password": password,
            "key": answer["api_key"],
            "account_id": answer["account"]["id"],
        }

    def banner(self, urls: dict[str, str]) -> None:
        env, api = self.env, urls["api"]
        account = self.dev_account(api)
        exports = [f"API={api}", f"ADMIN_TOKEN={env['ADMIN_TOKEN']}"]
        if not env.get("OPENAI_API_KEY"):
            exports.append(f"SIM={env['OPENAI_BASE_URL'].removesuffix('/v1')}")
        if "error" in account:
            session = (
                f" (registering a dev account failed: {account['error']})\n"
                " Register with README.md's commands (The API) instead.\n"
            )
        else:
            exports += [f"KEY={account['key']}", f"ACCOUNT_ID={account['account_id']}"]
            session = f" Registered for you: {account['email']} (password {account['password']}).\n"
        job = (
            '{"operation":"clustering","input":{"keywords":'
            '["best running shoes","running shoes for women","trail running tips"]}}'
        )
        text = f"""
==================================================================
 aijobs stack is up (Ctrl-C stops everything)
   API:         {api}   (OpenAPI: {api}/v1/openapi.json)
   Flower:      {urls["flower"]}  (user {env["FLOWER_USER"]}, password {env["FLOWER_PASSWORD"]})
   Redis:       {logs.redact(env["REDIS_URL"])}
   Provider:    {env["OPENAI_BASE_URL"]}
   Database:    {logs.redact(env["DATABASE_URL"])}
   Admin token: {env["ADMIN_TOKEN"]}
   Stripe:      {env.get("STRIPE_API_BASE") or "the simulator (README: Buying credits)"}
{session}
 Paste into a shell (README.md "The API" goes on from here):
export {" ".join(exports)}
curl -s -X POST "$API/v1/jobs" -H "Authorization: Bearer $KEY" \\
  -H 'Content-Type: application/json' -d '{job}'
curl -s "$API/v1/jobs?limit=5" -H "Authorization: Bearer $KEY"
==================================================================
"""
        with _print_lock:
            print(text, flush=True)

    def stop_all(self) -> None:
        """The app processes first (SIGTERM, the grace period, SIGKILL for stragglers),
        then what they needed: the provider, then Redis."""
        started = time.monotonic()
        app = [c for c in self.children if not c.infra]
        infra = [c for c in reversed(self.children) if c.infra]
        self._stop(app, self.policy.stop_grace)
        for child in infra:
            self._stop([child], INFRA_STOP_SECONDS)
        log("stack", f"all processes stopped in {time.monotonic() - started:.1f}s")

    def _stop(self, children: list[Child], grace: float) -> None:
        """SIGTERM to each leader only: gunicorn's master and Celery's main process stop
        their own workers gracefully, whereas a signal to the whole group would kill a
        Celery pool process in the middle of its job. Orphans of a leader that is gone
        get SIGTERM; what is left after `grace` gets SIGKILL."""
        if not children:
            return
        names = ", ".join(c.name for c in children)
        log("stack", f"stopping {names} (SIGTERM; up to {grace:g}s to finish)")
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        pending = list(children)
        while pending and time.monotonic() < deadline and not self.force_kill:
            time.sleep(0.1)
            for child in pending:
                if child.proc.poll() is not None:  # reaped, so it doesn't count as alive
                    _killpg(child.proc.pid, signal.SIGTERM)
            pending = [c for c in pending if _group_alive(c.proc.pid)]
        for child in pending:
            why = "a second signal" if self.force_kill else f"still running after {grace:g}s"
            log("stack", f"{child.name}: {why}; sending SIGKILL")
            _killpg(child.proc.pid, signal.SIGKILL)
        for child in children:
            child.proc.wait()

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        code = 1
        try:
            self.banner(self.start())
            while True:
                self.check()
                time.sleep(0.2)
        except Shutdown as exc:
            log("stack", f"received {exc}; stopping gracefully (a second Ctrl-C kills at once)")
            code = 0
        except StackError as exc:
            log("stack", f"ERROR: {exc}")
            log("stack", "stopping the whole stack")
        finally:
            self.stop_all()
            if self.redis is not None:
                self.redis.stop()
        return code


def main() -> int:
    try:
        stack = Stack()
    except StackError as exc:
        log("stack", f"ERROR: {exc}")
        return 1
    return stack.run()


if __name__ == "__main__":
    sys.exit(main())
