"""docker-compose.yml and the Dockerfile are never run here (no Docker engine), so check
their shape statically: every role exists, is wired to this repo's real modules, and the
Celery workers together consume every queue the API routes to."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    "beat",
    "flower",
}
APP_SERVICES = SERVICES - {"postgres", "redis"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
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
        assert env["DATABASE_URL"] == "postgresql+psycopg://aijobs:aijobs@postgres:5432/aijobs"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        for key in ("ADMIN_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
            assert key in env, (name, key)
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    assert any(str(p).endswith("5000:5000") for p in services["api"]["ports"])
    assert any(str(p).endswith("5555:5555") for p in services["flower"]["ports"])
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
    assert workers >= 3
    assert queues >= {"text", "image", "webhooks", "default"}
    assert "-Q text,default" in command_text(services["worker-text"])
    assert "--prefetch-multiplier 1" in command_text(services["worker-text"])
    assert "-Q image" in command_text(services["worker-image"])
    assert "-Q webhooks" in command_text(services["worker-webhooks"])
    assert "beat" in command_of(services["beat"])


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
