"""What the simulated provider answers: deterministic output for each operation of our
prompt protocol (OPERATION/INPUT), honest token counts, truncation at max_tokens, and PNGs.

Pure functions, no HTTP: tests recompute usage with `count_tokens` and `prompt_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
OPERATION_RE = re.compile(r"^[ \t]*OPERATION:[ \t]*(\S+)[ \t]*$", re.MULTILINE)
INPUT_RE = re.compile(r"^[ \t]*INPUT:[ \t]*", re.MULTILINE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# fmt: off
_VOCABULARY = (
    "strategy", "audience", "content", "search", "intent", "practical", "example", "result",
    "process", "simple", "clear", "useful", "approach", "common", "method", "reader", "value",
    "quality", "detail", "insight", "plan", "goal", "effective", "modern", "reliable",
    "important", "specific", "growth", "traffic", "ranking", "guide", "step", "tool", "data",
    "structure", "context", "feedback", "test", "measure", "improve", "build", "create",
    "review", "explain", "compare", "choose", "focus", "understand", "deliver", "support",
    "balance", "consistent", "helpful", "steady", "better", "stronger", "faster", "careful",
    "thoughtful", "honest", "real", "everyday", "long", "term", "small", "team", "budget",
    "time", "effort", "habit", "routine", "outcome", "benefit", "risk", "trade", "off",
    "priority", "workflow",
)
# fmt: on
_IDEA_TEMPLATES = (
    ("The Complete Guide to {kw}", "guide"),
    ("{n} {kw} Tips Every Beginner Should Know", "listicle"),
    ("Why {kw} Matters More Than You Think", "article"),
    ("How to Get Started with {kw}", "guide"),
    ("{n} Common {kw} Mistakes to Avoid", "listicle"),
    ("{kw}: What the Experts Actually Recommend", "article"),
)
_IMAGE_STYLES = (
    "Photorealistic",
    "Soft watercolor",
    "Minimalist flat vector",
    "Cinematic wide-angle",
    "Isometric 3D",
    "Warm editorial",
)


def count_tokens(text: str) -> int:
    """Our stand-in tokenizer: words and punctuation marks, so tests can recompute usage."""
    return len(TOKEN_RE.findall(text))


class HashStream:
    """Deterministic pseudo-random numbers (sha256 in counter mode) that depend only on a seed.

    The `random` module's global state would make output depend on what ran before.
    """

    def __init__(self, seed: str) -> None:
        self._seed = hashlib.sha256(seed.encode("utf-8")).digest()
        self._counter = 0
        self._buffer = b""

    def below(self, limit: int) -> int:
        """An integer in [0, limit)."""
        if len(self._buffer) < 4:
            block = self._seed + self._counter.to_bytes(8, "big")
            self._buffer += hashlib.sha256(block).digest()
            self._counter += 1
        value = int.from_bytes(self._buffer[:4], "big")
        self._buffer = self._buffer[4:]
        return value % limit

    def unit(self) -> float:
        """A float in [0, 1)."""
        return self.below(1_000_000) / 1_000_000

    def word(self) -> str:
        return _VOCABULARY[self.below(len(_VOCABULARY))]


def _message_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt usage: per-message content tokens plus OpenAI-like framing overhead."""
    return sum(count_tokens(_message_text(m.get("content"))) + 4 for m in messages) + 2


def _find_operation(messages: list[dict[str, Any]]) -> str | None:
    for message in messages:
        if message.get("role") in ("system", "developer"):
            found = OPERATION_RE.search(_message_text(message.get("content")))
            if found:
                return found.group(1)
    return None


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _message_text(message.get("content"))
    return ""


def _find_input(user_text: str) -> dict[str, Any] | None:
    """The JSON object after the first `INPUT:` line that is followed by valid JSON."""
    for marker in INPUT_RE.finditer(user_text):
        try:
            payload = json.loads(user_text[marker.end() :])
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            return payload
    return None


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name} must be a list of strings")
    return value


def _count(payload: dict[str, Any], default: int, high: int = 1000) -> int:
    value = payload.get("count", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError("count must be a small non-negative integer")
    return value


def generate_clustering(payload: dict[str, Any]) -> dict[str, Any]:
    """Group keywords by their first word, in order of first appearance."""
    clusters: dict[str, list[str]] = {}
    for keyword in _str_list(payload.get("keywords"), "keywords"):
        words = re.findall(r"\w+", keyword.lower())
        clusters.setdefault(words[0] if words else "misc", []).append(keyword)
    return {
        "clusters": [
            {"name": f"{head.capitalize()} topics", "keywords": keywords}
            for head, keywords in clusters.items()
        ]
    }


def generate_ideas(payload: dict[str, Any]) -> dict[str, Any]:
    """Exactly `count` distinct ideas built from templates over the cluster's keywords."""
    cluster = payload.get("cluster")
    if not isinstance(cluster, dict) or not isinstance(cluster.get("name"), str):
        raise ValueError("cluster must be an object with a name")
    name: str = cluster["name"]
    keywords = _str_list(cluster.get("keywords", []), "cluster.keywords") or [name]
    count = _count(payload, 3)
    rng = HashStream("ideas|" + name)
    offset = rng.below(len(_IDEA_TEMPLATES))
    ideas: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(count):
        keyword = keywords[i % len(keywords)]
        template, content_type = _IDEA_TEMPLATES[(offset + i) % len(_IDEA_TEMPLATES)]
        title = template.format(kw=keyword.title(), n=5 + rng.below(6))
        if title in seen:
            title = f"{title} (Part {i + 1})"
        seen.add(title)
        article = "An" if content_type[0] in "aeiou" else "A"
        targets = list(dict.fromkeys([keyword, keywords[(i + 1) % len(keywords)]]))
        description = (
            f'{article} {content_type} for readers searching for "{keyword}", covering '
            f"{rng.word()}, {rng.word()} and {rng.word()} with practical examples."
        )
        ideas.append(
            {
                "title": title,
                "description": description,
                "content_type": content_type,
                "target_keywords": targets,
            }
        )
    return {"ideas": ideas}


def generate_content(payload: dict[str, Any]) -> dict[str, Any]:
    """An article body of exactly `word_count` whitespace-separated words, seeded by title."""
    title = payload.get("title")
    if not isinstance(title, str):
        raise ValueError("title must be a string")
    word_count = payload.get("word_count", 600)
    if isinstance(word_count, bool) or not isinstance(word_count, int):
        raise ValueError("word_count must be an integer")
    if not 1 <= word_count <= 50_000:
        raise ValueError("word_count out of range")
    phrases = [kw.split() for kw in _str_list(payload.get("keywords", []), "keywords")]
    phrases = [p for p in phrases if p]
    rng = HashStream("content|" + title)
    remaining = word_count
    paragraphs: list[str] = []
    while remaining > 0:
        sentences: list[str] = []
        for _ in range(3 + rng.below(3)):
            if remaining <= 0:
                break
            length = min(remaining, 8 + rng.below(9))
            # About one sentence in three mentions a keyword, as a writer would.
            phrase = phrases[rng.below(len(phrases))] if phrases and rng.below(3) == 0 else []
            if len(phrase) > length:
                phrase = []
            words = [rng.word() for _ in range(length - len(phrase))]
            position = rng.below(len(words) + 1)
            words[position:position] = phrase
            remaining -= len(words)
            words[0] = words[0][:1].upper() + words[0][1:]
            sentences.append(" ".join(words) + ".")
        paragraphs.append(" ".join(sentences))
    return {"title": title, "body": "\n\n".join(paragraphs)}


def generate_image_prompts(payload: dict[str, Any]) -> dict[str, Any]:
    """Exactly `count` prompts, one per sentence of the text (cycling with varied styles)."""
    text = payload.get("text")
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    count = _count(payload, 3)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    sentences = [" ".join(s.rstrip(".!?").split()[:24]) for s in sentences]
    long_enough = [s for s in sentences if len(s.split()) >= 3]
    sentences = long_enough or [s for s in sentences if s] or ["an abstract scene"]
    prompts = []
    for i in range(count):
        subject = sentences[i % len(sentences)]
        style = _IMAGE_STYLES[i % len(_IMAGE_STYLES)]
        prompts.append(
            f"{style} illustration of {subject[:1].lower() + subject[1:]}, "
            "natural lighting, detailed, no text"
        )
    return {"prompts": prompts}


GENERATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "clustering": generate_clustering,
    "idea_generation": generate_ideas,
    "content_generation": generate_content,
    "image_prompt_extraction": generate_image_prompts,
}


def _echo(user_text: str) -> dict[str, Any]:
    snippet = " ".join(user_text.split())[:80]
    return {"text": f"Simulated response to: {snippet}" if snippet else "Simulated response."}


def generate_content_for(messages: list[dict[str, Any]]) -> str:
    """The assistant's reply for a conversation, following our OPERATION/INPUT protocol."""
    user_text = _last_user_text(messages)
    generator = GENERATORS.get(_find_operation(messages) or "")
    payload = _find_input(user_text)
    result = _echo(user_text)
    if generator is not None and payload is not None:
        try:
            result = generator(payload)
        except (ValueError, TypeError, KeyError):
            logger.debug("input does not fit the operation; echoing", exc_info=True)
    return json.dumps(result, ensure_ascii=False)


def truncate_tokens(text: str, limit: int) -> tuple[str, bool]:
    """Cut `text` just after its `limit`-th token; True when something was cut."""
    matches = list(TOKEN_RE.finditer(text))
    if len(matches) <= limit:
        return text, False
    return text[: matches[limit - 1].end()] if limit > 0 else "", True


def make_png(name: str, size: int = 8) -> bytes:
    """A small solid-colour RGB PNG whose colour is derived from `name`."""
    rgb = hashlib.sha256(name.encode("utf-8")).digest()[:3]
    raw = b"".join(b"\x00" + rgb * size for _ in range(size))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
