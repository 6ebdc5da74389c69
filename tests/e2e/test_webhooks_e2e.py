"""Webhooks end to end: API -> job worker -> webhooks queue -> a real Celery worker ->
a real HTTP receiver that checks every delivery with the independent Standard Webhooks
verifier (the `standardwebhooks` package). Retries run on a shortened schedule."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from billing.periods import add_months
from models import Account, utcnow
from models.db import transaction
from tasks import periodic
from tests.support import Worker, auth, register, wait_for_job
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e
SCHEDULE = (0.4, 1.2)
ADMIN = {"X-Admin-Token": "test-admin-token"}
IMAGE_JOB = {"operation": "image_generation", "input": {"prompt": "a lighthouse", "count": 1}}


@pytest.fixture(scope="module")
def webhook_worker(worker_env: dict[str, str]) -> Iterator[Worker]:
    """A worker on the `webhooks` queue only, allowed to call 127.0.0.1 receivers."""
    env = {
        **worker_env,
        "WEBHOOK_ALLOW_PRIVATE_URLS": "1",
        "WEBHOOK_RETRY_SCHEDULE": ",".join(map(str, SCHEDULE)),
    }
    running = Worker(env, queues="webhooks").start()
    yield running
    running.stop()


@pytest.fixture
def api(e2e: Any, webhook_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "1")
    return e2e


def deliveries(client: Any, key: str, job_id: str, settled: bool = True) -> list[dict[str, Any]]:
    """The job's delivery log, once no delivery is pending any more."""
    deadline = time.monotonic() + 20
    while True:
        data: list[dict[str, Any]] = client.get(
            f"/v1/jobs/{job_id}/webhook-deliveries", headers=auth(key)
        ).get_json()["data"]
        if not settled or (data and all(d["status"] != "pending" for d in data)):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still pending: {data}")
        time.sleep(0.05)


def test_a_finished_job_is_delivered_signed_and_verifiable(api: Any) -> None:
    key, _ = register(api)
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]

    with Receiver() as receiver:
        job = api.post(
            "/v1/jobs", json={**IMAGE_JOB, "webhook_url": receiver.url}, headers=auth(key)
        ).get_json()
        finished = wait_for_job(api, key, job["id"])
        (request,) = receiver.wait_for(1)

    event = request.verify(secret)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["result"] == finished["result"]
    assert event["data"]["credits_charged"] == finished["credits_charged"]
    assert request.headers["webhook-id"].startswith("msg_")
    # What an attacker could change, the verifier catches.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace(b"succeeded", b"failed"), request.headers)
    old = str(int(request.headers["webhook-timestamp"]) - 600)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body, {**request.headers, "webhook-timestamp": old})

    (delivery,) = deliveries(api, key, job["id"])
    assert delivery["id"] == request.headers["webhook-id"]
    assert delivery["status"] == "succeeded"
    (attempt,) = delivery["attempt_log"]
    assert attempt["status_code"] == 200
    assert attempt["latency_ms"] >= 0
    assert attempt["attempted_at"]


def test_500_twice_then_200_is_three_attempts_of_one_message_with_growing_delays(
    api: Any,
) -> None:
    key, _ = register(api)
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]

    with Receiver(500, 500, 200) as receiver:
        job = api.post(
            "/v1/jobs", json={**IMAGE_JOB, "webhook_url": receiver.url}, headers=auth(key)
        ).get_json()
        requests = receiver.wait_for(3)

    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for request in requests:
        assert request.verify(secret)["type"] == "job.succeeded"
    first_gap, second_gap = (b.at - a.at for a, b in pairwise(requests))
    assert first_gap >= SCHEDULE[0] * 0.8
    assert second_gap > first_gap
    (delivery,) = deliveries(api, key, job["id"])
    assert delivery["status"] == "succeeded"  # final: nothing more after the 200
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
    assert len(receiver.requests) == 3


def test_410_disables_the_url_and_nothing_more_is_sent(api: Any) -> None:
    key, _ = register(api)

    with Receiver(410) as receiver:
        job = api.post(
            "/v1/jobs", json={**IMAGE_JOB, "webhook_url": receiver.url}, headers=auth(key)
        ).get_json()
        receiver.wait_for(1)
        (delivery,) = deliveries(api, key, job["id"])
        redeliver = api.post(
            f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=auth(key)
        )
        time.sleep(SCHEDULE[0] * 2.5)  # a retry would have come by now

    assert len(receiver.requests) == 1
    assert delivery["status"] == "disabled"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [410]
    assert redeliver.status_code == 409
    assert redeliver.get_json()["error"]["code"] == "webhook_disabled"


def test_a_failed_job_is_announced_to_the_account_endpoint(api: Any, sim_control: Any) -> None:
    key, _ = register(api)
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]
    sim_control.post("/_sim/faults", json={"status": 400, "times": 5})

    with Receiver() as receiver:
        api.put("/v1/webhooks/endpoint", json={"url": receiver.url}, headers=auth(key))
        job = api.post("/v1/jobs", json=IMAGE_JOB, headers=auth(key)).get_json()
        (request,) = receiver.wait_for(1)

    event = request.verify(secret)
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["error"]["code"]
    assert event["data"]["credits_charged"] == 0


def test_the_end_of_a_prepaid_bank_transfer_is_announced_and_stops_renewal(api: Any) -> None:
    """Admin confirms a 1-month transfer over the API; a month later the renewal beat job
    moves the account to pending_payment and a signed `account.payment_due` reaches the
    account's endpoint through the webhooks worker. (The month passes in the data: the
    paid month is moved back in time, since deliveries are due by the real clock.)"""
    key, account = register(api)
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]
    api.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "growth"}, headers=ADMIN)
    payment = {"payment_reference": "BT-E2E", "amount": "149.00", "payer_name": "Jo Doe"}
    confirmed = api.post(
        f"/v1/admin/accounts/{account['id']}/bank-transfer", json=payment, headers=ADMIN
    )
    assert confirmed.status_code == 200, confirmed.get_json()
    paid_until = utcnow() - timedelta(minutes=1)
    with transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account["id"])
            .values(
                period_start=add_months(paid_until, -1), period_end=paid_until,
                paid_until=paid_until,
            )
        )  # fmt: skip

    with Receiver() as receiver:
        api.put("/v1/webhooks/endpoint", json={"url": receiver.url}, headers=auth(key))
        summary = periodic.run_periodic("renewal")
        (request,) = receiver.wait_for(1)

    assert summary == "0 account(s) renewed"
    event = request.verify(secret)
    assert event["type"] == "account.payment_due"
    assert event["data"] == {
        "account_id": account["id"], "status": "pending_payment",
        "reason": "prepaid_period_ended", "paid_until": paid_until.isoformat(),
    }  # fmt: skip
    seen = api.get("/v1/account", headers=auth(key)).get_json()
    assert (seen["status"], seen["credits"]["balance"]) == ("pending_payment", 2000 + 40000)
    job = api.post("/v1/jobs", json=IMAGE_JOB, headers=auth(key))
    assert job.status_code == 202  # what is left stays spendable
    assert wait_for_job(api, key, job.get_json()["id"])["status"] == "succeeded"


def test_a_jobs_lines_share_its_ids_from_api_to_worker_to_webhook(
    api: Any, worker: Worker, webhook_worker: Worker
) -> None:
    """With LOG_FORMAT=json (the test workers' setting), the job worker's and the webhook
    worker's lines about a job parse as JSON and carry its job id and request id."""
    key, account = register(api)
    with Receiver() as receiver:
        job = api.post(
            "/v1/jobs",
            json={**IMAGE_JOB, "webhook_url": receiver.url},
            headers={**auth(key), "X-Request-Id": "req-e2e-1"},
        ).get_json()
        assert wait_for_job(api, key, job["id"])["status"] == "succeeded"
        deliveries(api, key, job["id"])

    def lines_about(output: list[str]) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in output if line.startswith("{")]
        return [line for line in parsed if line.get("job_id") == job["id"]]

    ran = lines_about(worker.output)
    assert ran
    assert {line["request_id"] for line in ran} == {"req-e2e-1"}
    assert {line["operation"] for line in ran} == {"image_generation"}
    delivered = lines_about(webhook_worker.output)
    assert delivered
    assert {line["account_id"] for line in delivered} == {account["id"]}
    assert all(line["delivery_id"].startswith("msg_") for line in delivered)


def test_an_automation_run_ends_with_one_signed_automation_event(api: Any) -> None:
    key, _ = register(api)
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]
    body = {"keywords": ["running shoes", "trail running"], "stages": ["clustering"]}

    with Receiver() as receiver:
        submitted = api.post(
            "/v1/automations", json={**body, "webhook_url": receiver.url}, headers=auth(key)
        )
        assert submitted.status_code == 202, submitted.get_json()
        run_id = submitted.get_json()["id"]
        deadline = time.monotonic() + 30
        while not any(
            r.verify(secret)["type"].startswith("automation.") for r in receiver.requests
        ):
            assert time.monotonic() < deadline, [r.verify(secret) for r in receiver.requests]
            time.sleep(0.05)
        time.sleep(0.5)  # a second automation event would arrive now
        events = [request.verify(secret) for request in receiver.requests]

    run = api.get(f"/v1/automations/{run_id}", headers=auth(key)).get_json()
    (event,) = [e for e in events if e["type"].startswith("automation.")]
    assert event["type"] == "automation.succeeded" == f"automation.{run['status']}"
    assert event["data"]["id"] == run_id
    assert event["data"]["credits_charged"] == run["credits_charged"] > 0
    assert run["released_credits"] == run["reserved_credits"] - run["credits_charged"]
