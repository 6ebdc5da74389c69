"""Keyword research client (Ahrefs-style); the simulated provider serves it locally."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from settings import get_settings

DEFAULT_COUNTRY = "us"  # what the research service assumes without one


class ResearchUnavailable(Exception):
    """The research service failed; the caller gives the query back."""


@dataclass(frozen=True)
class ResearchResult:
    seed: str
    keywords: list[dict[str, Any]]


def research(seed: str, limit: int, country: str | None = None) -> ResearchResult:
    settings = get_settings()
    headers = (
        {"Authorization": f"Bearer {settings.ahrefs_api_key}"} if settings.ahrefs_api_key else {}
    )
    body: dict[str, Any] = {"seed": seed, "limit": limit}
    if country:
        body["country"] = country
    try:
        response = httpx.post(
            f"{settings.ahrefs_api_url}/keyword-research",
            json=body,
            headers=headers,
            timeout=20,
            follow_redirects=False,
        )
        response.raise_for_status()
        payload = response.json()
        found = [_metrics(row, country) for row in payload.get("keywords", [])]
    except (
        httpx.HTTPError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        ArithmeticError,
    ) as exc:
        raise ResearchUnavailable(f"keyword research failed: {exc.__class__.__name__}") from exc
    return ResearchResult(seed=seed, keywords=found)


def _metrics(row: dict[str, Any], country: str | None) -> dict[str, Any]:
    """One result in the shape `POST /v1/keywords` takes back: CPC as a decimal string
    (never a float), the country it was researched for."""
    cpc = row.get("cpc")
    return {
        "keyword": str(row["keyword"]),
        "volume": int(row["volume"]) if row.get("volume") is not None else None,
        "difficulty": int(row["difficulty"]) if row.get("difficulty") is not None else None,
        "cpc": str(Decimal(str(cpc)).quantize(Decimal("0.01"))) if cpc is not None else None,
        "country": (row.get("country") or country or DEFAULT_COUNTRY).lower(),
    }
