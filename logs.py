"""Logging for every process (API, workers, beat): plain text by default, one JSON
object per line with `LOG_FORMAT=json`. Each line carries the ids of what it is about
(request, job, account, operation, model, delivery), bound in a context variable by the
request or task that is running, so a job's lines from the API, its worker and its
webhook delivery can be found by one id. Secrets never reach a line: API keys, login
tokens, webhook secrets and provider keys are cut to their prefix."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("request_id", "job_id", "account_id", "operation", "model", "delivery_id")
_context: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039
# Anything shaped like one of our secrets (or an OpenAI key), shown as its first chars.
_SECRET = re.compile(r"\b(aij_|tok_|whsec_|sk-)([A-Za-z0-9._~+/=-]{4})[A-Za-z0-9._~+/=-]{8,}")
# A password in a URL (a DATABASE_URL or REDIS_URL in an error or a banner).
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^\s/]+@", re.IGNORECASE)
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}…", text)


def bind(**fields: str | None) -> None:
    """Add ids to the current context (the rest of this request or task)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Ids for the lines logged inside the block; the previous context afterwards."""
    token = _context.set(dict(_context.get()))
    bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def clear() -> None:
    _context.set({})


def current() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (as `record.context`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = current()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            **getattr(record, "context", {}),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key != "context" and key not in line:
                line[key] = value if isinstance(value, int | float | bool) else redact(str(value))
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        context = getattr(record, "context", {})
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return text


def json_enabled() -> bool:
    return os.environ.get("LOG_FORMAT", "text").strip().lower() == "json"


def configure(level: int | str | None = None) -> None:
    """One handler on the root logger, on stderr; safe to call more than once."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "aijobs", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.aijobs = True  # type: ignore[attr-defined]
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if json_enabled() else TextFormatter())
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO").upper())
