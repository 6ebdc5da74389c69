"""schemathesis, every check on, against the live API (the Flask app served by werkzeug
in a thread; real Redis, real database): user endpoints with a registered account's
credentials, admin endpoints with the admin token. It must find nothing.

Bounded for CI: SCHEMATHESIS_MAX_EXAMPLES examples per operation and phase (default 8).
The settings (tests/api/schemathesis_setup/schemathesis.toml) and the generator hooks for the
rules OpenAPI cannot state (tests/api/schemathesis_setup/hooks.py) say why each is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import assert_audit_clean
from tests.support import auth, register

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "schemathesis_setup"
ADMIN = {"X-Admin-Token": "test-admin-token"}
MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8")
# The users' run leaves out the admin endpoints (the other run) and Stripe's webhook, which
# Stripe calls with a signature made from a secret no client holds
# (tests/api/test_purchases_api.py sends it real ones).
NOT_USERS = "^/v1/admin/|^/v1/billing/stripe/webhook$"


def run_schemathesis(base: str, headers: dict[str, str], *filters: str) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(HERE / "schemathesis.toml"),
        "--no-color",
        "run", f"{base}/v1/openapi.json",
        "--checks", "all",
        "--max-examples", MAX_EXAMPLES,
        "--seed", os.environ.get("SCHEMATHESIS_SEED", "1"),
        "--workers", "1",
        "--generation-database", "none",
        "--request-timeout", "30",
        *[option for name, value in headers.items() for option in ("-H", f"{name}: {value}")],
        *filters,
        *os.environ.get("SCHEMATHESIS_ARGS", "").split(),  # e.g. --report junit
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_setup.hooks",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    log = Path(os.environ.get("SCHEMATHESIS_LOG", "/dev/null"))
    if log != Path("/dev/null"):
        log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]


def rich_account(client: Any) -> dict[str, str]:
    """A scale-plan account with credits to spare, and a login token for it: a token,
    unlike a key, is not something the run itself can revoke (`DELETE /v1/keys/{id}`)."""
    key, account = register(client, "schemathesis@example.com")
    for change in ({"plan": "scale", "status": "active"},):
        moved = client.patch(f"/v1/admin/accounts/{account['id']}", json=change, headers=ADMIN)
        assert moved.status_code == 200, moved.get_json()
    granted = client.post(
        f"/v1/admin/accounts/{account['id']}/credits",
        json={"amount": 5_000_000, "reason": "schemathesis"},
        headers=ADMIN,
    )
    assert granted.status_code == 200, granted.get_json()
    login = client.post(
        "/v1/auth/login",
        json={"email": "schemathesis@example.com", "password": "correct horse"},
    )
    assert login.status_code == 200, login.get_json()
    assert client.get("/v1/account", headers=auth(key)).status_code == 200
    return {"Authorization": f"Bearer {login.get_json()['token']}"}


def test_user_endpoints_pass_every_check(client: Any, live: str, no_enqueue: None) -> None:
    run_schemathesis(
        live,
        rich_account(client),
        "--exclude-path-regex", NOT_USERS,
    )  # fmt: skip
    assert_audit_clean()


def test_admin_endpoints_pass_every_check(client: Any, live: str, no_enqueue: None) -> None:
    rich_account(client)  # something to find
    run_schemathesis(live, ADMIN, "--include-path-regex", "^/v1/admin/")
    assert_audit_clean()
