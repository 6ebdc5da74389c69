"""The provider client's reading of the SDK's `usage`, which the SDK does not type-check."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from workers.provider import MAX_INPUT_TOKENS, billed_tokens, token_count

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}]
SENT = len(b"Be brief.") + len("héllo".encode())
TEXT = '{"ok": true}'


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (0, 0),
        (7, 7),
        (100.0, 100),
        (100.5, None),
        (-1, None),
        (-1.0, None),
        ("100", None),
        (None, None),
        (True, None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_token_count_takes_whole_non_negative_numbers_only(value: Any, count: int | None) -> None:
    assert token_count(value) == count


def _usage(prompt: Any, completion: Any) -> SimpleNamespace:
    return SimpleNamespace(prompt_tokens=prompt, completion_tokens=completion)


@pytest.mark.parametrize(
    ("usage", "max_tokens", "expected"),
    [
        (_usage(30, 4), 100, (30, 4)),
        (_usage(30.0, 4.0), 100, (30, 4)),
        (_usage(None, 4), 100, (SENT, 4)),
        (_usage(30, -2), 100, (30, len(TEXT))),
        (_usage("30", 4.5), 100, (SENT, len(TEXT))),
        (None, 100, (SENT, len(TEXT))),
        (_usage(30, None), 3, (30, 3)),
        (_usage(3_000_000_000, 3_000_000_000), 10, (MAX_INPUT_TOKENS, 10)),
    ],
)
def test_billed_tokens(usage: Any, max_tokens: int, expected: tuple[int, int]) -> None:
    """Whole floats count; other odd counts are the bytes bound; all are clamped."""
    assert billed_tokens(usage, MESSAGES, TEXT, max_tokens) == expected
