"""Keyword research client (Ahrefs-style); the simulated provider serves it locally.

A call ends as a result or `ResearchUnavailable` (the view gives the query back), never
anything else, whatever the service sends. One deadline (AHREFS_TIMEOUT_SECONDS) bounds
the whole exchange: a per-read timeout alone lets a service that answers one byte at a
time hold the call for as long as it likes, so the exchange runs on a short-lived event
loop the deadline can cancel wherever it is. The answer is read up to
AHREFS_MAX_RESPONSE_BYTES, and one API process runs at most AHREFS_MAX_CONCURRENT calls
at once (beyond: `ResearchBusy`), so a slow service cannot take every API thread.

Rows come back only when `POST /v1/keywords` takes them as they are (an import is all or
none, so one bad row would spoil it), and no more than were asked for.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from api.validation import storable
from billing.errors import InvalidInput
from billing.keywords import KeywordEntry
from billing.text import trim
from settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_COUNTRY = "us"  # what the research service assumes without one


class ResearchUnavailable(Exception):
    """The research service failed; the caller gives the query back."""


class ResearchBusy(ResearchUnavailable):
    """This process already runs its most research calls at once; the caller gives the
    query back and asks for a retry."""


@dataclass(frozen=True)
class ResearchResult:
    seed: str
    keywords: list[dict[str, Any]]


class _Slots:
    """Research calls in flight in this process; the limit is read per call (settings)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = 0

    @contextmanager
    def take(self, limit: int) -> Iterator[None]:
        """A slot for one call, or `ResearchBusy` at once: waiting would hold the thread."""
        with self._lock:
            if self._taken >= limit:
                raise ResearchBusy(f"{limit} keyword research calls already running")
            self._taken += 1
        try:
            yield
        finally:
            with self._lock:
                self._taken -= 1


_SLOTS = _Slots()


def research(seed: str, limit: int, country: str | None = None) -> ResearchResult:
    """Up to `limit` keyword ideas around `seed`; raises `ResearchUnavailable` only."""
    settings = get_settings()
    headers = {"Accept-Encoding": "identity"}  # the size cap is on what we hold
    if settings.ahrefs_api_key:
        headers["Authorization"] = f"Bearer {settings.ahrefs_api_key}"
    body: dict[str, Any] = {"seed": seed, "limit": limit}
    if country:
        body["country"] = country
    url = f"{settings.ahrefs_api_url}/keyword-research"
    with _SLOTS.take(settings.ahrefs_max_concurrent):
        try:
            raw = asyncio.run(
                _post(
                    url,
                    body,
                    headers,
                    settings.ahrefs_timeout_seconds,
                    settings.ahrefs_max_response_bytes,
                )
            )
            rows = json.loads(raw).get("keywords", [])
            if not isinstance(rows, list):
                raise TypeError("'keywords' is not a list")
            entries = (_entry(row, country) for row in rows)
            found = list(itertools.islice((e for e in entries if e is not None), limit))
        except Exception as exc:
            # Whatever it is (a RecursionError from deeply nested JSON, too), the service
            # failed: the query is given back, and the client gets a 502, not a 500.
            log.warning("keyword research failed: %s: %s", type(exc).__name__, exc)
            raise ResearchUnavailable(f"keyword research failed: {type(exc).__name__}") from exc
    return ResearchResult(seed=seed, keywords=found)


async def _post(
    url: str, body: dict[str, Any], headers: dict[str, str], seconds: float, max_bytes: int
) -> bytes:
    """The answer's body, all of it within `seconds` and at most `max_bytes` long
    (TimeoutError, ValueError otherwise)."""
    async with (
        asyncio.timeout(seconds),
        httpx.AsyncClient(
            follow_redirects=False,
            timeout=None,  # noqa: S113 - the deadline above bounds every step
        ) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        response.raise_for_status()
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ValueError(f"an answer encoded as {encoding!r}, not asked for")
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) > max_bytes:
                raise ValueError(f"an answer over {max_bytes} bytes")
        return bytes(data)


def _entry(row: Any, country: str | None) -> dict[str, Any] | None:
    """One result in the shape `POST /v1/keywords` takes back (CPC as a decimal string,
    never a float; the country it was researched for), or None when it would refuse it."""
    try:
        keyword = trim(row["keyword"])
        if not storable(keyword):
            return None
        volume, difficulty, cpc = row.get("volume"), row.get("difficulty"), row.get("cpc")
        entry = KeywordEntry(
            keyword=keyword,
            volume=int(volume) if volume is not None else None,
            difficulty=int(difficulty) if difficulty is not None else None,
            cpc=Decimal(str(cpc)).quantize(Decimal("0.01")) if cpc is not None else None,
            country=(row.get("country") or country or DEFAULT_COUNTRY).lower(),
        )
    except (InvalidInput, ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
        return None
    return {
        "keyword": entry.keyword,
        "volume": entry.volume,
        "difficulty": entry.difficulty,
        # abs: a "-0.00" passed the check but reads as negative
        "cpc": str(abs(entry.cpc)) if entry.cpc is not None else None,
        "country": entry.country,
    }
