"""The provider client's reading of the SDK's `usage`, which the SDK does not type-check."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from workers.provider import describe_error
from workers.provider_usage import MAX_INPUT_TOKENS, billed_tokens, token_count

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


def test_a_provider_error_shows_the_tenant_its_status_and_code_not_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenAI's 401 body quotes the key it was given (masked, but partly): the job's
    error (and its webhook) gets the status and the error code; the text is logged."""
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-proj-AbCd****WXYZ.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    error = openai.AuthenticationError(
        "Error code: 401 - " + str(body),
        response=httpx.Response(401, json=body, request=request),
        body=body["error"],
    )

    with caplog.at_level(logging.WARNING, logger="workers.provider"):
        described = describe_error(error)

    assert described == "HTTP 401 (invalid_api_key)"
    assert "sk-proj" in caplog.text
