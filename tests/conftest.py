"""Shared fixtures: real Redis, real PostgreSQL 15, real SQLite, the simulated
provider over HTTP, and a real Celery worker process for end-to-end tests.

Every database-backed test runs once per backend in TEST_DATABASES
(default "sqlite,postgresql").
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, text
from sqlalchemy.exc import OperationalError

from billing import catalog
from billing.audit import audit
from celeryconfig import QUEUES
from models import Base, Plan
from models.db import dispose_engines, get_engine, transaction
from ops.cli import migrate
from ops.ports import free_port
from ops.postgres_server import PostgresServer
from ops.redis_server import RedisServer
from settings import reload_settings
from simulator.server import make_server
from tests.support import Worker

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",")]
# Tables seeded once per database and kept between tests.
KEPT_TABLES = {"plans", "ai_model_configs", "catalog_version", "alembic_version"}


class _SettingsMonkeyPatch(pytest.MonkeyPatch):
    """`monkeypatch` whose env changes reach `get_settings()`, which reads the
    environment once per process: each setenv, delenv and the undo read it again."""

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        reload_settings()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        reload_settings()

    def undo(self) -> None:
        super().undo()
        reload_settings()


@pytest.fixture
def monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    patch = _SettingsMonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(autouse=True)
def _settings_from_the_environment() -> None:
    """Every test starts from the settings the environment gives now."""
    reload_settings()


def pytest_configure(config: pytest.Config) -> None:
    """`make test` runs pytest-xdist's `load` scheduling, which hands each process its tests
    in collection order, so the order below holds in every process (each has its own Redis,
    PostgreSQL and worker). Other modes reorder or steal tests: refuse them."""
    dist = getattr(config.option, "dist", "no")
    if dist not in ("no", "load"):
        raise pytest.UsageError(f"--dist {dist} breaks the suite's test order; use load")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within each backend, tests that start the session's worker run last: once started it
    consumes every queue, and API-only tests rely on their jobs staying queued."""
    backends = {name: index for index, name in enumerate(BACKENDS)}

    def order(item: pytest.Item) -> tuple[int, bool]:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("database_url") if callspec else None
        uses_worker = "worker" in getattr(item, "fixturenames", ())
        return backends.get(backend, -1), uses_worker

    items.sort(key=order)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def sim() -> Iterator[Any]:
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sim_control(sim: Any) -> Iterator[httpx.Client]:
    """HTTP control of the simulated provider's faults and rate limits; cleared around
    each test."""
    no_limits = {"rpm": 0, "tpm": 0, "window_seconds": 60}
    with httpx.Client(base_url=sim.url) as client:
        client.delete("/_sim/faults")
        client.delete("/_sim/stats")
        client.put("/_sim/ratelimit", json=no_limits)
        yield client
        client.delete("/_sim/faults")
        client.put("/_sim/ratelimit", json=no_limits)


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
    elif request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg_server")
        url = server.create_database(f"aijobs_{os.getpid()}")
    else:
        raise ValueError(f"unknown backend {request.param!r} in TEST_DATABASES")
    migrate(url)
    with transaction(url) as session:
        catalog.seed(session)
    return url


@pytest.fixture
def db_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The backend's URL, set as DATABASE_URL, with all non-catalog rows wiped after."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    yield database_url
    truncate(database_url)
    # Catalog rows may have been edited or added by a test: back to the shipped ones.
    with transaction(database_url) as session:
        shipped = [plan["slug"] for plan in catalog.PLANS]
        session.execute(delete(Plan).where(Plan.slug.not_in(shipped)))
        catalog.seed(session, reset=True)


def truncate(url: str, attempts: int = 5) -> None:
    """Empty every non-catalog table. A worker still writing (a heartbeat, a webhook
    attempt) can deadlock with TRUNCATE's table locks on PostgreSQL: try again."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name not in KEPT_TABLES]
    for attempt in range(attempts):
        try:
            with get_engine(url).begin() as connection:
                if url.startswith("postgresql"):
                    names = ", ".join(tables)
                    connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                else:
                    for table in tables:
                        connection.execute(text(f"DELETE FROM {table}"))
            return
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


@pytest.fixture
def env(
    db_url: str, redis_server: RedisServer, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    values = {
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "OPENAI_BASE_URL": sim.url + "/v1",
        "ADMIN_TOKEN": "test-admin-token",
        # Tests poll hard; the throttling tests switch limits back on.
        "RATE_LIMITS_ENABLED": "0",
        "AUTH_THROTTLE_ENABLED": "0",
        # Development mode, as `make run`: invitation tokens come back to the inviter.
        "INVITE_TOKENS_IN_RESPONSE": "1",
        "PROVIDER_RETRY_MAX_WAIT": "0.2",
        "PROVIDER_MAX_ATTEMPTS": "3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def app(env: dict[str, str]) -> Any:
    from api.app import create_app

    application = create_app()
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="session")
def worker_env(database_url: str, redis_server: RedisServer, sim: Any) -> dict[str, str]:
    return {
        "LOG_FORMAT": "json",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "OPENAI_BASE_URL": sim.url + "/v1",
        "PROVIDER_RETRY_MAX_WAIT": "0.2",
        "PROVIDER_MAX_ATTEMPTS": "3",
        # No limits unless a test sets an admin override; a short window when it does.
        "PROVIDER_RATE_WINDOW_SECONDS": "5",
        # Heartbeats often enough that tests may shorten the hold TTL to seconds.
        "HEARTBEAT_INTERVAL_SECONDS": "1",
        "HEARTBEAT_STALE_SECONDS": "5",
    }


@pytest.fixture(scope="session")
def worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """The session's worker; it also serves its metrics on `metrics_port`."""
    port = free_port()
    samples = tmp_path_factory.mktemp("worker-metrics")
    running = Worker(
        {**worker_env, "WORKER_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(samples)}
    )
    running.metrics_port = port
    running.start()
    yield running
    running.stop()


@pytest.fixture
def e2e(
    client: Any, worker: Worker, sim_control: httpx.Client, redis_server: RedisServer
) -> Iterator[Any]:
    """API + real worker + simulated provider; the ledger audit runs after each test."""
    import redis

    # Drop messages left by API-only tests; keep kombu's exchange bindings.
    redis.Redis.from_url(redis_server.url).delete(*QUEUES)
    yield client
    assert_audit_clean()


def assert_audit_clean() -> None:
    with transaction() as session:
        violations = audit(session)
    assert violations == [], "ledger audit failed:\n" + "\n".join(violations)


@pytest.fixture(autouse=True, scope="session")
def _dispose_after_session() -> Iterator[None]:
    yield
    dispose_engines()
