"""Webhook retry timing on its own: the production schedule, jitter and Retry-After."""

from __future__ import annotations

import random

import pytest

from billing.webhooks import MAX_RETRY_AFTER_SECONDS, retry_delay
from settings import Settings

SCHEDULE = (0.4, 1.2)


def test_the_production_schedule_spans_about_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBHOOK_RETRY_SCHEDULE", raising=False)
    schedule = Settings().webhook_retry_schedule

    assert schedule[0] == 5
    assert list(schedule) == sorted(schedule)
    assert 20 * 3600 <= sum(schedule) <= 30 * 3600


def test_delays_are_jittered_within_20_percent_and_keep_growing() -> None:
    rng = random.Random(7)
    for _ in range(200):
        first, second, third = (retry_delay(SCHEDULE, n, None, rng) for n in (1, 2, 3))
        assert 0.32 <= first <= 0.48
        assert 0.96 <= second <= 1.44
        assert 0.96 <= third <= 1.44  # past its end the schedule repeats its last step
        assert first < second


def test_retry_after_is_a_floor_capped_at_a_day() -> None:
    rng = random.Random(7)

    assert retry_delay(SCHEDULE, 1, 30.0, rng) == 30.0
    assert retry_delay(SCHEDULE, 1, 0.0, rng) < 0.5
    assert retry_delay(SCHEDULE, 1, 10**9, rng) == MAX_RETRY_AFTER_SECONDS
