"""A Python client generated from the OpenAPI document (openapi-python-client) works:
it registers, submits a job and reads it back, typed, against the live API with a real
worker. The generator's config is the default but for the names."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_for_job

pytestmark = pytest.mark.e2e
PACKAGE = "aijobs_client"


@pytest.fixture
def generated(client: Any, tmp_path: Path) -> Iterator[Any]:
    """The client package, generated from the app's own document and imported."""
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(client.get("/v1/openapi.json").get_json()))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project_name_override: aijobs-client\npackage_name_override: {PACKAGE}\npost_hooks: []\n"
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "openapi-python-client"), "generate",
            "--path", str(spec), "--config", str(config), "--meta", "none",
            "--output-path", str(tmp_path / PACKAGE),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Only the CSV import (a text/csv body) is beyond this generator.
    skipped = [line for line in done.stdout.splitlines() if "will not be generated" in line]
    assert all("keyword-library/import" in line for line in skipped), done.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_a_generated_client_registers_submits_and_reads_a_job_back(
    e2e: Any, live: str, generated: Any
) -> None:
    register = importlib.import_module(f"{PACKAGE}.api.auth.auth_register")
    get_account = importlib.import_module(f"{PACKAGE}.api.accounts.accounts_get_account")
    submit = importlib.import_module(f"{PACKAGE}.api.jobs.jobs_submit")
    get_job = importlib.import_module(f"{PACKAGE}.api.jobs.jobs_get_job")
    list_jobs = importlib.import_module(f"{PACKAGE}.api.jobs.jobs_list_jobs")
    models = importlib.import_module(f"{PACKAGE}.models")

    anonymous = generated.Client(base_url=live, raise_on_unexpected_status=True)
    signup = register.sync(
        client=anonymous,
        body=models.RegisterBody(email="generated@example.com", password="correct horse"),
    )
    assert isinstance(signup, models.RegisterOut), signup
    assert signup.account.credits_.available == 2000  # `credits` is a builtin

    me = generated.AuthenticatedClient(
        base_url=live, token=signup.api_key, raise_on_unexpected_status=True
    )
    account = get_account.sync(client=me)
    assert isinstance(account, models.AccountOut)
    assert account.plan.slug == "free-trial"

    body = models.SubmitClustering(
        operation="clustering",
        input_=models.ClusteringInput(keywords=["running shoes", "trail running"]),
    )
    submitted = submit.sync_detailed(client=me, body=body, idempotency_key="generated-1")
    assert submitted.status_code == 202
    job = submitted.parsed
    assert isinstance(job, models.JobOut)
    assert job.status == models.JobOutStatus.QUEUED
    assert job.operation == models.JobOutOperation.CLUSTERING

    wait_for_job(e2e, signup.api_key, job.id)
    done = get_job.sync(client=me, job_id=job.id)
    assert isinstance(done, models.JobOut)
    assert done.status == models.JobOutStatus.SUCCEEDED
    assert 0 < done.credits_charged <= done.reserved_credits
    clusters = done.result.to_dict()["clusters"]
    assert sorted(k for c in clusters for k in c["keywords"]) == ["running shoes", "trail running"]

    page = list_jobs.sync(client=me, status=models.JobsListJobsStatus.SUCCEEDED, limit=10)
    assert [j.id for j in page.data] == [job.id]
    assert page.next_cursor is None

    refused = submit.sync_detailed(
        client=me,
        body=models.SubmitClustering(
            operation="clustering", input_=models.ClusteringInput(keywords=["x"])
        ),
        idempotency_key="generated-1",  # another body with the same key
    )
    assert refused.status_code == 409
    assert isinstance(refused.parsed, models.ErrorOut)
    assert refused.parsed.error.code == "idempotency_conflict"
