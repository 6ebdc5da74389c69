"""Keyword research client (Ahrefs-style); the simulated provider serves it locally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from settings import get_settings


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
    except (httpx.HTTPError, ValueError) as exc:
        raise ResearchUnavailable(f"keyword research failed: {exc.__class__.__name__}") from exc
    return ResearchResult(seed=seed, keywords=list(payload.get("keywords", [])))
