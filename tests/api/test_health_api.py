"""/healthz stays an answer when the database hangs: a 503 naming it, within a few
seconds, rather than a request (and an API thread) waiting as long as the server does."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.models.test_db import silent_listener, within


def test_a_database_that_never_answers_is_a_quick_503(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.get("/healthz").status_code == 200
    with silent_listener() as url:
        monkeypatch.setenv("DATABASE_URL", url)
        answers: list[Any] = []
        started = time.monotonic()

        assert within(10, lambda: answers.append(client.get("/healthz"))) is None

        assert time.monotonic() - started < 4
        assert answers[0].status_code == 503
        assert answers[0].get_json()["database"] == "unavailable"
        assert answers[0].get_json()["broker"] == "ok"
