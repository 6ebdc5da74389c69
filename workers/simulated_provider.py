"""A simulated OpenAI-compatible provider (plus an Ahrefs stand-in) for tests and local runs.

It answers our prompt protocol with deterministic, well-formed JSON and honest ``usage``
token counts, so credit metering can be checked exactly, and it injects faults (error
statuses, Retry-After, latency) on demand so retry and refund paths can be exercised
against a real HTTP server and the real ``openai`` SDK. Standard library only.

Run it with ``python -m workers.simulated_provider --host 127.0.0.1 --port 0``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
OPERATION_RE = re.compile(r"^[ \t]*OPERATION:[ \t]*(\S+)[ \t]*$", re.MULTILINE)
INPUT_RE = re.compile(r"^[ \t]*INPUT:[ \t]*", re.MULTILINE)
IMAGE_PATH_RE = re.compile(r"^/images/([A-Za-z0-9_-]{1,128})\.png$")
HOST_HEADER_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "hidream-full", "dall-e-3", "gpt-image-1")
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_LATENCY_MS = 600_000
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
_AHREFS_PREFIXES = ("", "best", "how to", "what is", "cheap", "free", "top", "easy", "online")
_AHREFS_SUFFIXES = (
    "",
    "for beginners",
    "tips",
    "ideas",
    "tools",
    "guide",
    "examples",
    "near me",
    "cost",
    "vs alternatives",
    "checklist",
    "2025",
)


def count_tokens(text: str) -> int:
    """Our stand-in tokenizer: words and punctuation marks, so tests can recompute usage."""
    return len(TOKEN_RE.findall(text))


class RequestError(Exception):
    """A client mistake that becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class FaultRule:
    """A queued fault: the next `times` matching chat/images requests get it."""

    id: int
    status: int | None
    times: int
    latency_ms: int
    match: str | None
    retry_after: float | None


@dataclass(frozen=True)
class Reply:
    """A response ready to be written; handlers return these so counting stays central."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Fault:
    """What fault injection decided for one request."""

    latency_ms: int = 0
    status: int | None = None
    retry_after: float | None = None


class _HashStream:
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


# --- JSON and error helpers ---------------------------------------------------------------


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, _json_bytes(payload), headers=headers)


def _error_type(status: int) -> tuple[str, str | None]:
    """OpenAI's error type and code for a status, so the SDK maps it to the right exception."""
    if status == 429:
        return "rate_limit_error", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    if status == 401:
        return "authentication_error", "invalid_api_key"
    return "invalid_request_error", None


def error_reply(
    status: int,
    message: str,
    code: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """An OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""
    error_type, default_code = _error_type(status)
    body = {
        "error": {
            "message": message,
            "type": error_type,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }
    return _json_reply(status, body, headers)


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    return payload


def _int_field(
    payload: dict[str, Any], name: str, default: int | None, low: int, high: int
) -> int | None:
    """Read an optional integer field, rejecting bools, floats and out-of-range values."""
    value = payload.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, f"'{name}' must be an integer between {low} and {high}.")
    return value


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- text generation for our prompt protocol -------------------------------------------------


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
    rng = _HashStream("ideas|" + name)
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
    rng = _HashStream("content|" + title)
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


def ahrefs_keywords(seed: str, limit: int, country: str) -> list[dict[str, Any]]:
    """Keyword ideas around a seed with stable metrics, most searched first."""
    base = " ".join(seed.lower().split())
    candidates: list[str] = []
    for suffix in _AHREFS_SUFFIXES:
        for prefix in _AHREFS_PREFIXES:
            candidates.append(" ".join(part for part in (prefix, base, suffix) if part))
    ordering = _HashStream("order|" + base)
    head, tail = candidates[0], candidates[1:]
    tail.sort(key=lambda kw: hashlib.sha256(f"{base}|{kw}".encode()).hexdigest())
    chosen = [head, *tail[: limit - 1]]
    scale = 10 ** (2 + 3 * ordering.unit())
    rows: list[dict[str, Any]] = []
    for rank, keyword in enumerate(chosen):
        rng = _HashStream(f"metrics|{country}|{keyword}")
        volume = max(10, int(scale / (1 + rank * (0.5 + rng.unit())) // 10 * 10))
        rows.append(
            {
                "keyword": keyword,
                "volume": volume,
                "difficulty": rng.below(101),
                "cpc": round(0.1 + 9.9 * rng.unit(), 2),
            }
        )
    rows.sort(key=lambda row: -row["volume"])
    return rows


# --- the server ------------------------------------------------------------------------------


class SimulatedProviderServer(ThreadingHTTPServer):
    """The HTTP server; it also owns the fault queue and request counters (thread-safe)."""

    daemon_threads = True
    # Idle keep-alive clients must not make server_close() (or SIGTERM) wait for them.
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.base_latency_ms = _env_latency()
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_rule_id = 1
        self._counts = {"chat": 0, "images": 0, "ahrefs": 0}
        self._failed = 0
        super().__init__((host, port), SimulatedProviderHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def url(self) -> str:
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}"

    def add_rule(
        self,
        status: int | None,
        times: int,
        latency_ms: int,
        match: str | None,
        retry_after: float | None,
    ) -> FaultRule:
        with self._lock:
            rule = FaultRule(self._next_rule_id, status, times, latency_ms, match, retry_after)
            self._next_rule_id += 1
            self._rules.append(rule)
            return FaultRule(**asdict(rule))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def begin_request(self, kind: str, raw_body: bytes, use_rules: bool) -> FaultRule | None:
        """Count a request and consume the first pending rule that applies to it."""
        text = raw_body.decode("utf-8", errors="replace")
        with self._lock:
            self._counts[kind] += 1
            if not use_rules:
                return None
            for index, rule in enumerate(self._rules):
                if rule.match is None or rule.match in text:
                    rule.times -= 1
                    if rule.times <= 0:
                        del self._rules[index]
                    return FaultRule(**asdict(rule))
        return None

    def record_failure(self) -> None:
        with self._lock:
            self._failed += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._counts),
                "failed": self._failed,
                "pending_faults": [asdict(rule) for rule in self._rules],
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)
            self._failed = 0


def _env_latency() -> int:
    raw = os.environ.get("SIM_LATENCY_MS", "0").strip() or "0"
    value = int(raw)
    if not 0 <= value <= MAX_LATENCY_MS:
        raise ValueError(f"SIM_LATENCY_MS must be between 0 and {MAX_LATENCY_MS}")
    return value


Route = Callable[["SimulatedProviderHandler", bytes], Reply]


class SimulatedProviderHandler(BaseHTTPRequestHandler):
    """Routes requests; speaks HTTP/1.1 with Content-Length on every response (keep-alive)."""

    server: SimulatedProviderServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY each reply on a kept-alive
    # connection waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server_version = "simulated-provider/1.0"
    sys_version = ""

    # (method, path) -> (handler, counted kind or None, whether queued fault rules apply)
    ROUTES: ClassVar[dict[tuple[str, str], tuple[str, str | None, bool]]] = {
        ("POST", "/v1/chat/completions"): ("_chat", "chat", True),
        ("POST", "/v1/images/generations"): ("_images", "images", True),
        ("POST", "/ahrefs/keyword-research"): ("_ahrefs", "ahrefs", False),
        ("GET", "/v1/models"): ("_models", None, False),
        ("GET", "/healthz"): ("_healthz", None, False),
        ("POST", "/_sim/faults"): ("_add_fault", None, False),
        ("DELETE", "/_sim/faults"): ("_clear_faults", None, False),
        ("GET", "/_sim/stats"): ("_stats", None, False),
        ("DELETE", "/_sim/stats"): ("_reset_stats", None, False),
    }

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet; the access log is only interesting when debugging."""
        logger.debug("%s - %s", self.address_string(), format % args)

    # --- plumbing ----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            raw = self._read_body()
        except RequestError as exc:
            self.close_connection = True
            self._send(error_reply(exc.status, exc.message, exc.code))
            return
        route = self.ROUTES.get((method, path))
        try:
            if route is None:
                reply = self._unrouted(method, path)
            else:
                name, kind, use_rules = route
                handler: Route = getattr(type(self), name)
                reply = self._counted(kind, use_rules, raw, handler) if kind else handler(self, raw)
        except RequestError as exc:
            reply = error_reply(exc.status, exc.message, exc.code)
        except Exception:
            logger.exception("simulated provider failed on %s %s", method, path)
            reply = error_reply(500, "The simulated provider hit an internal error.")
        self._send(reply)

    def _unrouted(self, method: str, path: str) -> Reply:
        match = IMAGE_PATH_RE.match(path)
        if match and method == "GET":
            return Reply(
                200,
                make_png(match.group(1)),
                "image/png",
                (("Cache-Control", "public, max-age=86400"),),
            )
        if match or any(p == path for _, p in self.ROUTES):
            return error_reply(405, f"Method {method} not allowed on {path}.")
        return error_reply(404, f"Invalid URL ({method} {path})", code="not_found")

    def _counted(self, kind: str, use_rules: bool, raw: bytes, handler: Route) -> Reply:
        """Count the request, apply injected latency and failures, then run the handler."""
        rule = self.server.begin_request(kind, raw, use_rules)
        try:
            fault = self._fault_for(kind, rule)
            if fault.latency_ms:
                time.sleep(fault.latency_ms / 1000)
            if fault.status is not None:
                headers = []
                if fault.retry_after is not None:
                    headers.append(("Retry-After", _format_seconds(fault.retry_after)))
                reply = error_reply(
                    fault.status,
                    f"Simulated failure with status {fault.status}.",
                    headers=tuple(headers),
                )
            else:
                reply = handler(self, raw)
        except RequestError as exc:
            reply = error_reply(exc.status, exc.message, exc.code)
        except Exception:
            logger.exception("simulated provider failed on %s", self.path)
            reply = error_reply(500, "The simulated provider hit an internal error.")
        if reply.status >= 400:
            self.server.record_failure()
        return reply

    def _fault_for(self, kind: str, rule: FaultRule | None) -> _Fault:
        fault = _Fault()
        if kind in ("chat", "images"):
            fault.latency_ms += self.server.base_latency_ms
        fault.latency_ms += self._header_int("X-Sim-Latency-Ms", 0, MAX_LATENCY_MS) or 0
        header_status = self._header_int("X-Sim-Fail-Status", 400, 599)
        if rule is not None:
            fault.latency_ms += rule.latency_ms
            fault.status, fault.retry_after = rule.status, rule.retry_after
        if header_status is not None:
            fault.status, fault.retry_after = header_status, None
        return fault

    def _header_int(self, name: str, low: int, high: int) -> int | None:
        raw = self.headers.get(name)
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise RequestError(400, f"Header {name} must be an integer between {low} and {high}.")
        return value

    def _read_body(self) -> bytes:
        """Read the whole request body so keep-alive connections stay in sync."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError as exc:
            raise RequestError(400, "Invalid Content-Length header.") from exc
        if not 0 <= length <= MAX_BODY_BYTES:
            raise RequestError(413, "Request body too large.")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise RequestError(400, "Malformed chunked request body.") from exc
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise RequestError(413, "Request body too large.")
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.status != 204:  # RFC 9110: a 204 carries no body and no Content-Length
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.status != 204:
            self.wfile.write(reply.body)

    def _public_url(self) -> str:
        """The base URL the client used, so image links work behind port mapping."""
        host = self.headers.get("Host", "")
        return f"http://{host}" if HOST_HEADER_RE.match(host) else self.server.url

    # --- endpoints ---------------------------------------------------------------------------

    def _chat(self, raw: bytes) -> Reply:
        payload = _parse_json_object(raw)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError(400, "You must provide a model parameter.")
        messages = payload.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise RequestError(400, "'messages' must be a non-empty array of message objects.")
        if payload.get("stream"):
            raise RequestError(400, "Streaming is not supported by the simulated provider.")
        limit = _int_field(payload, "max_completion_tokens", None, 1, 1_000_000)
        if limit is None:
            limit = _int_field(payload, "max_tokens", None, 1, 1_000_000)
        n = _int_field(payload, "n", 1, 1, 8) or 1

        content, truncated = generate_content_for(messages), False
        if limit is not None:
            content, truncated = truncate_tokens(content, limit)
        message = {"role": "assistant", "content": content, "refusal": None}
        choices = [
            {
                "index": i,
                "message": message,
                "logprobs": None,
                "finish_reason": "length" if truncated else "stop",
            }
            for i in range(n)
        ]
        usage_in, usage_out = prompt_tokens(messages), count_tokens(content) * n
        body = {
            "id": "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": usage_in,
                "completion_tokens": usage_out,
                "total_tokens": usage_in + usage_out,
            },
            "system_fingerprint": "fp_simulated",
        }
        return _json_reply(200, body)

    def _images(self, raw: bytes) -> Reply:
        payload = _parse_json_object(raw)
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(400, "'prompt' must be a non-empty string.")
        model = payload.get("model") or "dall-e-3"
        if not isinstance(model, str):
            raise RequestError(400, "'model' must be a string.")
        n = _int_field(payload, "n", 1, 1, 10) or 1
        response_format = payload.get("response_format") or "url"
        if response_format not in ("url", "b64_json"):
            raise RequestError(400, "'response_format' must be 'url' or 'b64_json'.")
        base = self._public_url()
        data = []
        for i in range(n):
            name = hashlib.sha256(f"{model}|{prompt}|{i}".encode()).hexdigest()[:32]
            item: dict[str, Any] = {"revised_prompt": prompt}
            if response_format == "b64_json":
                item["b64_json"] = base64.b64encode(make_png(name)).decode("ascii")
            else:
                item["url"] = f"{base}/images/{name}.png"
            data.append(item)
        return _json_reply(200, {"created": int(time.time()), "data": data})

    def _ahrefs(self, raw: bytes) -> Reply:
        payload = _parse_json_object(raw)
        seed = payload.get("seed")
        if not isinstance(seed, str) or not seed.strip():
            raise RequestError(400, "'seed' must be a non-empty string.")
        limit = _int_field(payload, "limit", 10, 1, 100) or 10
        country = payload.get("country") or "us"
        if not isinstance(country, str):
            raise RequestError(400, "'country' must be a string.")
        keywords = ahrefs_keywords(seed, limit, country.lower())
        return _json_reply(200, {"seed": seed, "country": country, "keywords": keywords})

    def _models(self, raw: bytes) -> Reply:
        data = [
            {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "simulated"}
            for model in MODELS
        ]
        return _json_reply(200, {"object": "list", "data": data})

    def _healthz(self, raw: bytes) -> Reply:
        return _json_reply(200, {"status": "ok"})

    def _add_fault(self, raw: bytes) -> Reply:
        payload = _parse_json_object(raw)
        status = payload.get("status")
        if status is not None:
            status = _int_field(payload, "status", None, 400, 599)
        times = _int_field(payload, "times", 1, 1, 1_000_000) or 1
        latency_ms = _int_field(payload, "latency_ms", 0, 0, MAX_LATENCY_MS) or 0
        match = payload.get("match")
        if match is not None and not isinstance(match, str):
            raise RequestError(400, "'match' must be a string or null.")
        retry_after = payload.get("retry_after")
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or not 0 <= retry_after <= 86_400
        ):
            raise RequestError(400, "'retry_after' must be a number of seconds or null.")
        rule = self.server.add_rule(status, times, latency_ms, match, retry_after)
        return _json_reply(201, asdict(rule))

    def _clear_faults(self, raw: bytes) -> Reply:
        self.server.clear_rules()
        return Reply(204, content_type="text/plain")

    def _stats(self, raw: bytes) -> Reply:
        return _json_reply(200, self.server.stats())

    def _reset_stats(self, raw: bytes) -> Reply:
        self.server.reset_stats()
        return Reply(204, content_type="text/plain")


def make_server(host: str = "127.0.0.1", port: int = 0) -> SimulatedProviderServer:
    """Bind (port 0 picks a free port) without serving; call serve_forever() to start."""
    return SimulatedProviderServer(host, port)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    parser = argparse.ArgumentParser(description="Simulated OpenAI-compatible provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SIM_LOG_LEVEL", "WARNING").upper())

    server = make_server(args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sys.stdout.write(f"simulated provider listening on {server.url}\n")
        sys.stdout.flush()
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
