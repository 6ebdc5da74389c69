"""Credit estimates (the hold, an upper bound) and actual charges, from AIModelConfig.

Text: the hold covers a byte count of the input (a BPE token is at least one byte,
so bytes bound tokens from above) plus the prompt template, plus `max_tokens` of
output, which the provider is told and cannot exceed. Images: count x per-image.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from models import AIModelConfig

# Upper bound on the tokens of every operation's fixed prompt text (tests check it).
PROMPT_OVERHEAD_TOKENS = 600


@dataclass(frozen=True)
class Usage:
    """What the provider reported for one job."""

    tokens_in: int = 0
    tokens_out: int = 0
    images: int = 0


@dataclass(frozen=True)
class Charge:
    credits: int
    cost_usd: Decimal
    estimate_miss: bool


_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def dense_tokens(text: str) -> int:
    """A generous token estimate for text a model may echo inside its JSON answer: word
    pieces of the text as JSON escapes it (a quote, backslash or control character costs
    two), or one token per three UTF-8 bytes for scripts and strings (Thai, URLs) that
    split into many tokens."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    return max(len(_TOKEN.findall(escaped)), math.ceil(len(escaped.encode()) / 3))


def input_token_bound(job_input: dict[str, Any]) -> int:
    return len(json.dumps(job_input, ensure_ascii=False).encode()) + PROMPT_OVERHEAD_TOKENS


# The output bounds are the `max_tokens` each operation asks for: large enough that no
# input the API accepts gets its answer cut off (tests at every input maximum), because
# a cut-off answer still costs its tokens. Inputs that are dense in tokens (punctuation,
# quotes) hold more; ordinary inputs hold what they did.


def clustering_output_tokens(job_input: dict[str, Any]) -> int:
    """Every keyword echoed once, and a named cluster per keyword at most."""
    keywords = job_input.get("keywords", [])
    return len(json.dumps(keywords, ensure_ascii=False).encode()) + 18 * len(keywords) + 200


def idea_output_tokens(job_input: dict[str, Any]) -> int:
    """A title, a paragraph and the target keywords per idea: each idea may echo the
    cluster's longest keyword (or name) four times."""
    cluster = job_input.get("cluster", {})
    phrases = [str(cluster.get("name", "")), *cluster.get("keywords", [])]
    longest = max(dense_tokens(p) for p in phrases)
    return int(job_input.get("count", 3)) * (150 + 4 * longest) + 100


def content_output_tokens(job_input: dict[str, Any]) -> int:
    """1.6 tokens a word, the title echoed, plus room for a dense keyword phrase in every
    sentence."""
    words = int(job_input.get("word_count", 800))
    phrases = job_input.get("keywords", [])
    extra = max((dense_tokens(p) - 1.6 * len(p.split()) for p in phrases), default=0.0)
    title = dense_tokens(str(job_input.get("title", "")))
    return math.ceil(words * 1.6 + math.ceil(words / 8) * max(extra, 0.0)) + title + 300


def image_prompt_output_tokens(job_input: dict[str, Any]) -> int:
    """Each prompt may carry a whole sentence of the text, however dense."""
    sentences = _SENTENCE_END.split(str(job_input.get("text", "")))
    longest = max((dense_tokens(s) for s in sentences), default=0)
    return int(job_input.get("count", 3)) * (60 + longest) + 100


def text_credits(model: AIModelConfig, tokens: int) -> int:
    return max(1, math.ceil(tokens / model.tokens_per_credit))


def estimate_hold(model: AIModelConfig, job_input: dict[str, Any], output_tokens: int) -> int:
    """The hold: the most the job can cost (`output_tokens` is the `max_tokens` sent)."""
    if model.model_type == "image":
        return int(job_input.get("count", 1)) * model.credits_per_image
    return text_credits(model, input_token_bound(job_input) + output_tokens)


def actual_charge(model: AIModelConfig, usage: Usage, hold: int) -> Charge:
    if model.model_type == "image":
        credits = max(1, usage.images * model.credits_per_image)
        cost = model.cost_per_image * usage.images
    else:
        credits = text_credits(model, usage.tokens_in + usage.tokens_out)
        cost = (
            model.cost_per_1k_input * usage.tokens_in + model.cost_per_1k_output * usage.tokens_out
        ) / 1000
    return Charge(
        credits=min(credits, hold),
        cost_usd=cost.quantize(Decimal("0.000001")),
        estimate_miss=credits > hold,
    )
