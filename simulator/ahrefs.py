"""The Ahrefs stand-in: keyword ideas around a seed, with stable volume, difficulty and CPC.

`workers/ahrefs.py` posts to `{AHREFS_API_URL}/keyword-research`; locally that URL is this
blueprint's `/ahrefs` prefix on the simulator.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Response

from simulator.answers import HashStream
from simulator.errors import RequestError, int_field, json_object, json_response, str_field
from simulator.faults import counted

_PREFIXES = ("", "best", "how to", "what is", "cheap", "free", "top", "easy", "online")
_SUFFIXES = (
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


ahrefs = Blueprint("ahrefs", __name__, url_prefix="/ahrefs")


@ahrefs.post("/keyword-research")
@counted("ahrefs", queued=False)
def keyword_research() -> Response:
    payload = json_object()
    seed = payload.get("seed")
    if not isinstance(seed, str) or not seed.strip():
        raise RequestError(400, "'seed' must be a non-empty string.")
    limit = int_field(payload, "limit", 10, 1, 100) or 10
    country = str_field(payload, "country", "us")
    keywords = ahrefs_keywords(seed, limit, country.lower())
    return json_response(200, {"seed": seed, "country": country, "keywords": keywords})


def ahrefs_keywords(seed: str, limit: int, country: str) -> list[dict[str, Any]]:
    """Keyword ideas around a seed with stable metrics, most searched first."""
    base = " ".join(seed.lower().split())
    candidates: list[str] = []
    for suffix in _SUFFIXES:
        for prefix in _PREFIXES:
            candidates.append(" ".join(part for part in (prefix, base, suffix) if part))
    ordering = HashStream("order|" + base)
    head, tail = candidates[0], candidates[1:]
    tail.sort(key=lambda kw: hashlib.sha256(f"{base}|{kw}".encode()).hexdigest())
    chosen = [head, *tail[: limit - 1]]
    scale = 10 ** (2 + 3 * ordering.unit())
    rows: list[dict[str, Any]] = []
    for rank, keyword in enumerate(chosen):
        rng = HashStream(f"metrics|{country}|{keyword}")
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
