"""docker-compose.yml, the Dockerfile and deploy/nginx.conf are never run here (no Docker
engine), so check their shape statically: every role exists, is wired to this repo's real
modules, the Celery workers together consume every queue the API routes to, the API sits
behind the buffering proxy with the repository's gunicorn config, and Flower behind auth."""

from __future__ import annotations

import importlib
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CELERY_APP = "workers.celery_app:celery"
SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "api",
    "worker-text",
    "worker-image",
    "worker-webhooks",
    "worker-default",
    "beat",
    "flower",
    "proxy",
}
APP_SERVICES = SERVICES - {"postgres", "redis", "proxy"}
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(compose_text)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def command_text(service: dict[str, Any]) -> str:
    return " ".join(command_of(service))


def option(args: list[str], flag: str) -> str:
    """Value of `-Q text` or `--port=5555` style options."""
    for index, arg in enumerate(args):
        if arg == flag:
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {args}")


def module_path(dotted: str) -> Path:
    """`workers.celery_app` -> workers/celery_app.py (or a package's __init__.py)."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"


def test_all_services_exist_with_an_image_or_build(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name


def test_app_services_share_the_environment(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["DATABASE_URL"] == (
            "postgresql+psycopg://aijobs:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
            "@postgres:5432/aijobs"
        )
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        for key in ("ADMIN_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
            assert key in env, (name, key)
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    """Clients reach the API through the proxy only; Flower on the host's loopback only."""
    assert services["proxy"]["ports"] == ["5000:8080"]
    assert "ports" not in services["api"]
    assert services["api"]["expose"] == ["5000"]
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert option(command_of(services["flower"]), "--port") == "5555"


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert "pg_isready" in json.dumps(services["postgres"]["healthcheck"]["test"])
    assert "ping" in json.dumps(services["redis"]["healthcheck"]["test"])
    assert "/healthz" in json.dumps(services["api"]["healthcheck"]["test"])


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    api_deps = services["api"]["depends_on"]
    assert api_deps["postgres"]["condition"] == "service_healthy"
    assert api_deps["redis"]["condition"] == "service_healthy"
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert "migrate" not in services["migrate"].get("depends_on", {})
    assert services["migrate"]["restart"] == "no"
    assert command_text(services["migrate"]).endswith("python -m ops migrate && python -m ops seed")


def test_celery_services_cover_every_queue(services: dict[str, dict[str, Any]]) -> None:
    queues: set[str] = set()
    workers = 0
    for name, service in services.items():
        args = command_of(service)
        if "celery" not in args:
            continue
        assert option(args, "-A") == CELERY_APP, name
        if "worker" in args:
            workers += 1
            queues |= set(option(args, "-Q").split(","))
    assert workers >= 4
    assert queues >= {"text", "image", "webhooks", "default"}
    # The periodic work has a worker of its own: AI jobs never hold it back.
    for queue in ("text", "image", "webhooks", "default"):
        service = services[f"worker-{queue}"]
        args = command_of(service)
        assert option(args, "-Q") == queue
        assert option(args, "-n") == f"{queue}@%h"
        assert "--prefetch-multiplier 1" in command_text(service)
        assert service["environment"]["WORKER_NAME"] == queue
        assert "inspect ping -d $$WORKER_NAME@$$HOSTNAME" in json.dumps(service["healthcheck"])
    assert "beat" in command_of(services["beat"])


def test_secrets_come_from_the_environment_and_beat_keeps_its_schedule(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    """One SECRET_KEY for every replica (login tokens), required, never baked in; beat's
    schedule on a volume, so a re-created beat does not postpone every hourly entry."""
    for name in APP_SERVICES:
        assert services[name]["environment"]["SECRET_KEY"] == "${SECRET_KEY:?set SECRET_KEY}"
        assert (
            "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@"
            in (services[name]["environment"]["DATABASE_URL"])
        )
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == (
        "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    )
    schedule = option(command_of(services["beat"]), "-s")
    (volume,) = services["beat"]["volumes"]
    name, mount = volume.split(":")
    assert schedule.startswith(mount + "/")
    assert name in compose["volumes"]


def test_beat_is_unhealthy_once_it_stops_saving_its_schedule(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The healthcheck itself, run here on a stand-in for the schedule volume: healthy
    while a schedule file was saved in the last 10 minutes (beat saves every ~3)."""
    beat = services["beat"]
    (mount,) = [volume.split(":")[1] for volume in beat["volumes"]]
    kind, executable, flag, code = beat["healthcheck"]["test"]
    assert (kind, executable, flag) == ("CMD", "python", "-c")
    assert option(command_of(beat), "-s").startswith(mount + "/")
    check = [sys.executable, "-c", code.replace(mount, str(tmp_path))]

    def healthy() -> bool:
        return subprocess.run(check, timeout=30).returncode == 0

    assert not healthy()  # no schedule yet
    saved = tmp_path / "celerybeat-schedule.dat"
    saved.write_bytes(b"schedule")
    assert healthy()
    eleven_minutes_ago = time.time() - 660
    os.utime(saved, (eleven_minutes_ago, eleven_minutes_ago))
    assert not healthy()


def test_commands_name_real_modules_of_this_repo(services: dict[str, dict[str, Any]]) -> None:
    modules: set[str] = set()
    for service in services.values():
        text = command_text(service)
        modules.update(m.split(":")[0] for m in re.findall(r"-A (\S+)", text))
        modules.update(re.findall(r"python -m (\S+)", text))
        modules.update(m.split(":")[0] for m in re.findall(r"\b(api\.\S+):create_app", text))
    assert modules >= {"workers.celery_app", "ops", "api.app"}
    for module in modules:
        assert module_path(module).exists(), module
    assert (ROOT / "ops" / "__main__.py").exists()


def test_dockerfile_runs_the_api_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    assert "pip install ." in dockerfile
    user = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user
    assert user[-1] not in {"root", "0"}
    cmd = re.findall(r"^CMD (.+)$", dockerfile, re.MULTILINE)
    assert cmd
    assert "gunicorn" in cmd[-1]
    assert "api.app:create_app()" in cmd[-1]
    assert "0.0.0.0:5000" in cmd[-1]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "var"} <= set(ignored)


def test_the_api_runs_gunicorn_with_the_repository_config(
    services: dict[str, dict[str, Any]],
) -> None:
    """The same gunicorn.conf.py (buffering gthread worker, timeouts, limits) as make run."""
    api = command_of(services["api"])
    assert api[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert option(api, "--bind") == "0.0.0.0:5000"
    assert not {"--workers", "-w", "-k", "--worker-class"} & set(api)
    cmd = re.findall(r"^CMD (.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[-1]
    assert json.loads(cmd)[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    module, _, worker_class = config["worker_class"].rpartition(".")
    assert hasattr(importlib.import_module(module), worker_class)
    assert config["threads"] > 1
    assert config["timeout"] > config["graceful_timeout"] > config["keepalive"]
    assert config["limit_request_line"] > 0
    assert config["limit_request_fields"] > 0


def _nginx_directives(text: str) -> list[tuple[str, list[str]]]:
    """(directive, arguments) in order, comments stripped, quoted strings kept whole."""
    text = re.sub(r"#[^\n]*", "", text)
    tokens = re.findall(r"'[^']*'|[{};]|[^\s{};']+", text)
    directives: list[tuple[str, list[str]]] = []
    words: list[str] = []
    depth = 0
    for token in tokens:
        if token in "{};":
            if words:
                directives.append((words[0], words[1:]))
            words = []
            depth += {"{": 1, "}": -1, ";": 0}[token]
            assert depth >= 0, "unbalanced braces"
        else:
            words.append(token)
    assert depth == 0, "unbalanced braces"
    assert words == [], f"directive without ';': {words}"
    return directives


def test_the_proxy_buffers_requests_with_the_apis_limits_and_answers_json(
    services: dict[str, dict[str, Any]],
) -> None:
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert proxy["volumes"] == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    directives = _nginx_directives(NGINX_CONF.read_text())
    values = {name: args for name, args in directives}
    assert values["proxy_request_buffering"] == ["on"]
    assert values["proxy_buffering"] == ["on"]
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert re.fullmatch(r"\d+s", values[timeout][0]), timeout
        assert int(values[timeout][0][:-1]) <= 15, timeout
    size = values["client_max_body_size"][0]
    assert int(size.removesuffix("k")) * 1024 == Settings().max_request_bytes
    assert values["listen"] == ["8080"]  # the proxy's published container port
    upstreams = [args for name, args in directives if name == "server" and args]
    assert upstreams == [["api:5000", "resolve"]]  # the api service and its bind
    # re-resolved through Docker's DNS, so a re-created api container is found
    assert values["resolver"][0] == "127.0.0.11"
    assert values["zone"][0] == "api"
    assert values["proxy_pass"] == ["http://api"]

    # Every error nginx answers itself is the API's JSON error shape, from an internal
    # location returning the status the error_page maps to.
    locations: dict[str, tuple[int, dict[str, Any]]] = {}
    metrics_closed = False
    for index, (name, args) in enumerate(directives):
        if name == "location" and args == ["=", "/metrics"]:
            # Platform-wide figures never leave through the public port.
            metrics_closed = True
            assert directives[index + 1 : index + 3] == [
                ("default_type", ["application/json"]),
                (
                    "return",
                    ["404", """'{"error": {"code": "not_found", "message": "Not found."}}'"""],
                ),
            ]
        elif name == "location" and args[:1] == ["="]:
            following = directives[index + 1 : index + 6]
            body = dict(
                following[: next((n for n, d in enumerate(following) if d[0] == "location"), 5)]
            )
            assert body["internal"] == []
            assert body["default_type"] == ["application/json"]
            status, text = body["return"]
            locations[args[1]] = (int(status), json.loads(text.strip("'")))
    assert metrics_closed
    mapped = [args for name, args in directives if name == "error_page"]
    assert {code for args in mapped for code in args[:-1] if code.isdigit()} >= {
        "400", "413", "414", "494", "502", "503", "504",
    }  # fmt: skip
    for args in mapped:
        target = args[-1]
        status, body = locations[target]
        answered = next((int(a[1:]) for a in args if a.startswith("=")), None)
        assert status == (answered or int(args[0])), args
        assert set(body["error"]) >= {"code", "message"}, target


def test_prometheus_reaches_every_process_that_counts(
    services: dict[str, dict[str, Any]],
) -> None:
    """The API's gunicorn processes share one samples directory (a fresh tmpfs), and every
    worker serves its own registry on the internal network, listed in prometheus.yml."""
    api = services["api"]
    samples = api["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert int(api["environment"]["WEB_CONCURRENCY"]) > 1
    assert api["tmpfs"] == [samples]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:5000"]
    workers = [name for name in services if name.startswith("worker-")]
    targets = jobs["worker"]["static_configs"][0]["targets"]
    for name in workers:
        environment = services[name]["environment"]
        assert environment["WORKER_METRICS_ADDR"] == "0.0.0.0"
        assert f"{name}:{environment['WORKER_METRICS_PORT']}" in targets
        assert environment["WORKER_METRICS_PORT"] in environment["WEBHOOK_DENY_PORTS"].split(",")
    assert len(targets) == len(workers)
    assert services["api"]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:-}"


def test_flower_is_behind_auth_persistent_and_starts_after_the_worker(
    compose_text: str, services: dict[str, dict[str, Any]]
) -> None:
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == (
        "${FLOWER_USER:-admin}:${FLOWER_PASSWORD:?set FLOWER_PASSWORD}"
    )
    assert "FLOWER_UNAUTHENTICATED_API" not in compose_text
    args = command_of(flower)
    assert option(args, "--persistent") == "True"
    assert option(args, "--db") == "/app/var/flower.db"
    assert "flowerdata:/app/var" in flower["volumes"]
    assert flower["depends_on"]["worker-text"]["condition"] == "service_healthy"
    ping = " ".join(services["worker-text"]["healthcheck"]["test"])
    assert "inspect ping -d $$WORKER_NAME@$$HOSTNAME" in ping
    assert services["worker-text"]["environment"]["WORKER_NAME"] == "text"


def test_webhooks_may_never_target_the_stacks_own_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    """Checked at submission (api) and at every send (worker-webhooks): the same list."""
    ports = services["api"]["environment"]["WEBHOOK_DENY_PORTS"]
    assert set(ports.split(",")) >= {"5000", "8080", "5555", "6379", "5432"}
    assert services["worker-webhooks"]["environment"]["WEBHOOK_DENY_PORTS"] == ports
    for name in APP_SERVICES:
        assert "WEBHOOK_ALLOW_PRIVATE_URLS" not in services[name]["environment"], name


def test_the_api_takes_client_addresses_from_the_one_proxy(
    services: dict[str, dict[str, Any]],
) -> None:
    """Behind nginx every peer is the proxy: without this, one address for all clients
    would share the sign-up and login throttles."""
    assert services["api"]["environment"]["TRUSTED_PROXIES"] == "1"
    assert "TRUSTED_PROXIES" not in services["worker-text"]["environment"]
