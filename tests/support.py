"""Small helpers shared by tests (import as `tests.support`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update
from werkzeug.serving import make_server

from billing.periods import add_months
from billing.pricing import Usage
from billing.runs import complete_job, start_job
from models import Account, Cluster, utcnow
from models.db import transaction
from ops.processes import CeleryWorker

ROOT = Path(__file__).resolve().parent.parent


def register(client: Any, email: str = "owner@example.com") -> tuple[str, dict[str, Any]]:
    response = client.post("/v1/auth/register", json={"email": email, "password": "correct horse"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    return body["api_key"], body["account"]


def on_plan(
    client: Any, plan: str, email: str = "owner@example.com", status: str = "active"
) -> tuple[str, str]:
    """A new account moved to `plan` and `status` through the admin API: (key, account id)."""
    key, account = register(client, email)
    response = client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": plan, "status": status},
        headers={"X-Admin-Token": "test-admin-token"},
    )
    assert response.status_code == 200, response.get_json()
    return key, account["id"]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` on a real socket (werkzeug, threaded like gunicorn's workers): its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


MEMBER_PASSWORD = "a long password"


def join_team(client: Any, key: str, email: str, role: str) -> dict[str, Any]:
    """A member invited with `key` who accepted: id, their own API key and a login token.

    The invitation's token comes back to the inviter because the tests run with
    INVITE_TOKENS_IN_RESPONSE=1 (development mode, as `make run`)."""
    invited = client.post("/v1/team/invite", json={"email": email, "role": role}, headers=auth(key))
    assert invited.status_code == 201, invited.get_json()
    token = invited.get_json()["invitation"]["token"]
    accepted = client.post(
        "/v1/auth/accept-invitation", json={"token": token, "password": MEMBER_PASSWORD}
    )
    assert accepted.status_code == 200, accepted.get_json()
    body = accepted.get_json()
    return {"id": invited.get_json()["user"]["id"], "key": body["api_key"], "token": body["token"]}


def paid_account(
    client: Any, email: str = "owner@example.com", plan: str = "growth", sites: int = 2
) -> tuple[str, str, list[str]]:
    """A registered account moved to an active paid `plan`, with `sites` sites:
    (API key, account id, site ids)."""
    key, account = register(client, email)
    moved = client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": plan, "status": "active"},
        headers={"X-Admin-Token": "test-admin-token"},
    )
    assert moved.status_code == 200, moved.get_json()
    made = [client.post("/v1/sites", json={"name": f"site {n}"}, headers=auth(key))
            for n in range(sites)]  # fmt: skip
    return key, account["id"], [site.get_json()["id"] for site in made]


def all_pages(client: Any, key: str, path: str, limit: int, **query: str) -> list[dict[str, Any]]:
    """Every row of a cursor-paged listing; every page but the last must be full."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(
            path,
            query_string={**query, "limit": limit, **({"cursor": cursor} if cursor else {})},
            headers=auth(key),
        ).get_json()
        assert len(page["data"]) == limit or page["next_cursor"] is None, page
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def wait_for_job(client: Any, key: str, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")
        time.sleep(0.05)


class Worker(CeleryWorker):
    """A real `celery worker` process consuming our queues."""

    metrics_port: int | None = None


def settle(job_id: str, clusters: int = 2) -> None:
    """What the worker does with the provider's answer (API tests run no worker)."""
    with transaction() as session:
        run = start_job(session, job_id)
        assert run is not None
        made = [
            Cluster(name=f"c{n}", keywords=["running shoes"], account_id=run.account_id,
                    job_id=run.job_id, site_id=run.site_id)
            for n in range(clusters)
        ]  # fmt: skip
        assert complete_job(session, run, Usage(200, 100), {"clusters": []}, made)


def end_period_now(account_id: str) -> datetime:
    """Stores the month ending now as the account's usage period, as if its end had just
    passed and the hourly rollover had not run yet: the end."""
    end = utcnow()
    with transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(period_start=add_months(end, -1), period_end=end)
        )
    return end
