"""What the provider says an answer used, read defensively: the openai SDK does not check
types, so 100.0, "100", -1 and null all reach us, and a count can be absurdly large."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# The most input tokens one request is billed for: above any model's context window,
# far below what the usage columns hold.
MAX_INPUT_TOKENS = 2_000_000


def token_count(value: object) -> int | None:
    """A count as the provider reported it, or None when it is not a whole number >= 0:
    the SDK does not check types, so 100.0, "100", -1 and null all reach us."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def billed_tokens(
    usage: Any, messages: list[dict[str, str]], text: str, max_tokens: int
) -> tuple[int, int]:
    """The (input, output) tokens an answer is billed for, from the SDK's `usage`.

    A count that is not a whole number (or no usage at all) is taken at the bound the
    hold is built on, the bytes sent and the bytes answered (a token is at least one
    byte): the provider billed us for them, and the charge never exceeds the hold.
    Output is clamped to `max_tokens`, which the provider cannot exceed; input to
    MAX_INPUT_TOKENS.
    """
    sent = sum(len(message["content"].encode()) for message in messages)
    reported = (
        token_count(getattr(usage, "prompt_tokens", None)),
        token_count(getattr(usage, "completion_tokens", None)),
    )
    tokens_in = min(sent if reported[0] is None else reported[0], MAX_INPUT_TOKENS)
    tokens_out = min(len(text.encode()) if reported[1] is None else reported[1], max_tokens)
    if reported != (tokens_in, tokens_out):
        log.warning(
            "provider usage prompt_tokens=%r completion_tokens=%r billed as %s in, %s out",
            getattr(usage, "prompt_tokens", None),
            getattr(usage, "completion_tokens", None),
            tokens_in,
            tokens_out,
        )
    return tokens_in, tokens_out
