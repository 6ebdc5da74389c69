"""Fixtures the API tests share: a registered account's key, and jobs kept off the broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import register, serving


@pytest.fixture
def key(client: Any) -> str:
    return register(client)[0]


@pytest.fixture
def no_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs stay queued (cancellable) even while another module's worker is running."""
    monkeypatch.setattr("api.jobs.enqueue_job", lambda job_id, operation: None)


@pytest.fixture
def live(app: Any) -> Iterator[str]:
    """The app on a real socket: its URL."""
    with serving(app) as url:
        yield url
