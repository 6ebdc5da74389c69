"""Fixtures the API tests share: a registered account's key, and jobs kept off the broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.support import register


@pytest.fixture
def key(client: Any) -> str:
    return register(client)[0]


@pytest.fixture
def no_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs stay queued (cancellable) even while another module's worker is running."""
    monkeypatch.setattr("api.jobs.enqueue_job", lambda job_id, operation: None)


@pytest.fixture
def live(app: Any) -> Iterator[str]:
    """The app on a real socket (werkzeug, threaded like gunicorn's workers): its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
