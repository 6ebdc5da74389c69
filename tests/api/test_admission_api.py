"""What a submission costs (statements, Redis round trips), and that what the API caches
per process never outlives a change: a revoked key, a plan's models, model prices and an
account's plan count from the very next request in every API process (two gunicorn
servers, one worker process each, on the same database and Redis)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from ops.ports import free_port, wait_for_port
from ops.processes import stop_group
from ops.redis_server import RedisServer
from tests.factories import hold_write_transaction_in_process, statements_of
from tests.support import auth, register

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"X-Admin-Token": "test-admin-token"}
CLUSTER = {"operation": "clustering", "input": {"keywords": ["trail shoes", "road shoes"]}}
# Per submission, in a warm process (its price list cached): the API-key read (with the
# plan, the catalog stamp and whether the account has model preferences: it has none),
# the job row, the hold, admission. PostgreSQL: the job row and the reserve are one
# statement (ledger.reserve_new_job) and admission one more (the reserve's UPDATE holds
# the account row's lock). SQLite: the
# key read outside any transaction (api/db.py caller_read: no writer lock, no BEGIN),
# then a BEGIN IMMEDIATE on the same connection, the writes, the final COMMIT
# (models/sqlite.py writes these), and the reserve as its UPDATE and the hold's INSERT.
STATEMENTS = {"postgresql": 3, "sqlite": 7}


@contextmanager
def redis_round_trips() -> Iterator[list[bytes]]:
    """Every request this process sends to Redis (a pipeline is one)."""
    sent: list[bytes] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command if isinstance(command, bytes) else b"".join(command))
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def test_a_submission_costs_the_pinned_statements_and_one_redis_round_trip(
    client: Any, db_url: str
) -> None:
    key, _ = register(client)
    warm = client.post("/v1/jobs", json=CLUSTER, headers=auth(key))  # connections, price list
    assert warm.status_code == 202, warm.get_json()

    with statements_of(db_url) as statements, redis_round_trips() as trips:
        response = client.post("/v1/jobs", json=CLUSTER, headers=auth(key))

    assert response.status_code == 202, response.get_json()
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    assert len(statements) == STATEMENTS[backend], "\n".join(statements)
    # The task message only: no `task-sent` event (celeryconfig), rate limits are off here.
    assert len(trips) == 1, trips
    assert b"LPUSH" in trips[0].upper()
    assert response.get_json()["id"].encode() in trips[0]


def test_with_rate_limits_on_the_limiter_is_the_only_other_round_trip(
    client: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = register(client)
    monkeypatch.setenv("RATE_LIMITS_ENABLED", "1")
    assert client.post("/v1/jobs", json=CLUSTER, headers=auth(key)).status_code == 202

    with redis_round_trips() as trips:
        response = client.post("/v1/jobs", json=CLUSTER, headers=auth(key))

    assert response.status_code == 202, response.get_json()
    assert len(trips) == 2, trips
    assert [b"EVALSHA" in t.upper() for t in trips] == [True, False]


# --- every API process sees every change on its next request -------------------------------


class Api:
    """One API process: gunicorn with gunicorn.conf.py and a single worker process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py",
                "--bind", f"127.0.0.1:{self.port}", "api.app:create_app()",
            ],
            cwd=ROOT, env={**os.environ, **env, "WEB_CONCURRENCY": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port, timeout=30)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.http.get("/healthz")  # the worker has booted

    def stop(self) -> None:
        self.http.close()
        stop_group(self.process)


@pytest.fixture(scope="module")
def apis(database_url: str, redis_server: RedisServer, sim: Any) -> Iterator[tuple[Api, Api]]:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "OPENAI_BASE_URL": sim.url + "/v1",
        "ADMIN_TOKEN": ADMIN["X-Admin-Token"],
        "RATE_LIMITS_ENABLED": "0",
        "AUTH_THROTTLE_ENABLED": "0",
    }
    first = Api(env)
    try:
        second = Api(env)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def new_account(api: Api, plan: str) -> tuple[str, str]:
    """A new account moved to `plan` by an admin, through `api`: (key, account id)."""
    registered = api.http.post(
        "/v1/auth/register", json={"email": "owner@example.com", "password": "correct horse"}
    )
    assert registered.status_code == 201, registered.text
    key, account_id = registered.json()["api_key"], registered.json()["account"]["id"]
    moved = api.http.patch(
        f"/v1/admin/accounts/{account_id}", json={"plan": plan, "status": "active"},
        headers=ADMIN,
    )  # fmt: skip
    assert moved.status_code == 200, moved.text
    return key, account_id


def estimate(api: Api, key: str, model: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {**CLUSTER} | ({"model": model} if model else {})
    return api.http.post("/v1/jobs/estimate", json=body, headers=auth(key))


def submit(api: Api, key: str, model: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {**CLUSTER} | ({"model": model} if model else {})
    return api.http.post("/v1/jobs", json=body, headers=auth(key))


def test_a_revoked_key_fails_on_its_next_request_in_every_process(
    apis: tuple[Api, Api], db_url: str
) -> None:
    first, second = apis
    key, _ = new_account(first, "starter")
    spare = first.http.post("/v1/keys", json={"name": "spare"}, headers=auth(key)).json()
    listed = first.http.get("/v1/keys", headers=auth(key)).json()["data"]
    revoked_id = next(k["id"] for k in listed if k["id"] != spare["id"])
    for api in apis:  # both processes have served this key
        assert api.http.get("/v1/account", headers=auth(key)).status_code == 200
        assert submit(api, key).status_code == 202

    gone = first.http.delete(f"/v1/keys/{revoked_id}", headers=auth(spare["api_key"]))

    assert gone.status_code in (200, 204), gone.text
    for api in (second, first):
        assert api.http.get("/v1/account", headers=auth(key)).status_code == 401
        refused = submit(api, key)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert submit(api, spare["api_key"]).status_code == 202


def test_a_plans_models_changed_through_the_admin_api_count_on_the_next_request(
    apis: tuple[Api, Api], db_url: str
) -> None:
    first, second = apis
    key, _ = new_account(first, "starter")
    for api in apis:
        assert submit(api, key, "gpt-4o").status_code == 202

    patched = first.http.patch(
        "/v1/admin/plans/starter", json={"allowed_text_models": ["gpt-4o-mini"]}, headers=ADMIN
    )

    assert patched.status_code == 200, patched.text
    for api in (second, first):
        refused = submit(api, key, "gpt-4o")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "model_not_allowed"
        assert estimate(api, key, "gpt-4o").status_code == 403
        assert submit(api, key).json()["model"] == "gpt-4o-mini"


def test_model_prices_changed_in_the_database_count_on_the_next_request(
    apis: tuple[Api, Api], db_url: str
) -> None:
    """No admin endpoint edits prices: `ops seed` or an operator's SQL does, and the
    database stamps the catalog whoever writes it."""
    first, second = apis
    key, _ = new_account(first, "starter")
    before = {api.port: estimate(api, key).json()["credits"] for api in apis}
    assert len(set(before.values())) == 1
    credits = next(iter(before.values()))

    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE ai_model_configs SET tokens_per_credit = tokens_per_credit / 4 "
                    "WHERE name = 'gpt-4o-mini'"
                )
            )
    finally:
        engine.dispose()

    for api in (second, first):
        assert estimate(api, key).json()["credits"] >= 4 * credits - 3
        held = submit(api, key).json()
        assert held["reserved_credits"] == estimate(api, key).json()["credits"]


def test_an_account_moved_to_another_plan_by_an_admin_counts_on_the_next_request(
    apis: tuple[Api, Api], db_url: str
) -> None:
    first, second = apis
    key, account_id = new_account(first, "free")
    for api in apis:
        refused = submit(api, key, "gpt-4o")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_allowed"

    moved = first.http.patch(
        f"/v1/admin/accounts/{account_id}", json={"plan": "growth"}, headers=ADMIN
    )

    assert moved.status_code == 200, moved.text
    for api in (second, first):
        accepted = submit(api, key, "gpt-4o")
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["model"] == "gpt-4o"


def test_a_refused_caller_never_waits_for_the_database_writer(client: Any, db_url: str) -> None:
    """The key read runs before the request takes SQLite's writer lock (api/db.py
    caller_read): with another process holding it, a bad key is still refused at once,
    and a good key's submission goes through once the lock is free."""
    key, _ = register(client)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=hold_write_transaction_in_process, args=(db_url, ready))
    holder.start()
    try:
        assert ready.wait(60)
        started = time.monotonic()
        refused = client.post("/v1/jobs", json=CLUSTER, headers=auth("ak_not_a_key"))
        assert refused.status_code == 401
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.join(30)
    assert client.post("/v1/jobs", json=CLUSTER, headers=auth(key)).status_code == 202
