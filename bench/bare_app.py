"""The baseline of `bench.admission`: a bare Flask app whose `POST /v1/jobs` parses the
same JSON body and answers 202 with a job-shaped body, and nothing else (no auth, no
database, no broker). Served by the same gunicorn settings as the API
(`gunicorn -c gunicorn.conf.py 'bench.bare_app:create_app()'`)."""

from __future__ import annotations

import itertools
from typing import Any

from flask import Flask, request

_ids = itertools.count(1)


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/jobs")
    def submit() -> tuple[dict[str, Any], int]:
        body = request.get_json()
        job_id = f"job_{next(_ids):024d}"
        view = {
            "id": job_id,
            "status": "queued",
            "operation": body["operation"],
            "model": body.get("model") or "gpt-4o-mini",
            "reserved_credits": 10,
        }
        return view, 202

    return app
