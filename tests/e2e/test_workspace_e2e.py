"""End to end: deleting a site and removing a member while their job runs on the real
worker. The job finishes and is charged, its history stays, the seat and the keyword
count free up, and the ledger audit is clean (the `e2e` fixture)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models import Cluster, CreditUsageLog
from models.db import transaction
from tests.support import auth, join_team, on_plan, wait_for_job

pytestmark = pytest.mark.e2e
ADMIN = {"X-Admin-Token": "test-admin-token"}
SLOW_CALL = {"latency_ms": 1500, "times": 1}  # the provider holds the next call 1.5 s


def on_starter(client: Any) -> str:
    return on_plan(client, "starter")[0]


def wait_until_running(client: Any, key: str, job_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()["status"] == "queued":
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(0.02)


def test_a_site_deleted_while_its_job_runs_keeps_the_history(
    e2e: Any, sim_control: httpx.Client
) -> None:
    key = on_starter(e2e)
    site = e2e.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    e2e.post(
        "/v1/admin/keyword-library/import",
        data=b"keyword,country,volume,difficulty\nrunning shoes,us,900,30\ntrail run,us,400,20\n",
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    library = e2e.get("/v1/keyword-library", headers=auth(key)).get_json()["data"]
    added = e2e.post(
        "/v1/keyword-library/add",
        json={"site_id": site, "ids": [row["id"] for row in library]},
        headers=auth(key),
    ).get_json()["added"]
    sim_control.post("/_sim/faults", json=SLOW_CALL)
    job = e2e.post(
        "/v1/jobs",
        json={
            "operation": "clustering",
            "site_id": site,
            "input": {"keyword_ids": [k["id"] for k in added]},
        },
        headers=auth(key),
    ).get_json()
    wait_until_running(e2e, key, job["id"])

    deleted = e2e.delete(f"/v1/sites/{site}", headers=auth(key))
    finished = wait_for_job(e2e, key, job["id"])

    assert deleted.status_code == 200
    assert deleted.get_json()["keywords_deleted"] == 2
    assert finished["status"] == "succeeded", finished
    assert finished["credits_charged"] > 0
    assert finished["site_id"] == site
    limits = e2e.get("/v1/account", headers=auth(key)).get_json()["limits"]
    assert (limits["sites"]["used"], limits["keywords"]["used"]) == (0, 0)
    with transaction() as session:
        usage_sites = session.scalars(select(CreditUsageLog.site_id)).all()
        cluster_sites = set(session.scalars(select(Cluster.site_id)))
    assert usage_sites == [site]
    assert cluster_sites == {site}
    assert e2e.get(f"/v1/sites/{site}", headers=auth(key)).get_json()["status"] == "deleted"
    again = e2e.post(
        "/v1/jobs",
        json={"operation": "image_generation", "site_id": site, "input": {"prompt": "p"}},
        headers=auth(key),
    )
    assert again.status_code == 404


def test_a_member_removed_while_their_job_runs(e2e: Any, sim_control: httpx.Client) -> None:
    owner = on_starter(e2e)
    editor = join_team(e2e, owner, "ed@example.com", "editor")
    sim_control.post("/_sim/faults", json=SLOW_CALL)
    job = e2e.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "a lighthouse"}},
        headers=auth(editor["key"]),
    ).get_json()
    wait_until_running(e2e, owner, job["id"])

    removed = e2e.delete(f"/v1/team/{editor['id']}", headers=auth(owner))

    assert removed.status_code == 200
    assert e2e.get("/v1/account", headers=auth(editor["key"])).status_code == 401
    finished = wait_for_job(e2e, owner, job["id"])
    assert finished["status"] == "succeeded", finished
    history = e2e.get("/v1/credits/transactions", headers=auth(owner)).get_json()["data"]
    assert history[0]["type"] == "deduction"
    assert history[0]["job_id"] == job["id"]
    seats = e2e.get("/v1/account", headers=auth(owner)).get_json()["limits"]["users"]
    assert seats == {"used": 1, "limit": 2}
