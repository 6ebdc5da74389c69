"""Rules of this API that OpenAPI cannot state, taught to schemathesis's generator
(loaded through SCHEMATHESIS_HOOKS). Each is in the parameter's description too; a
generated query that breaks one is repaired (the rule's own refusal has its own tests)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import schemathesis

MAX_RANGE = timedelta(days=366)


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """Every phase's cases (the coverage phase bypasses `map_query`)."""
    if isinstance(case.query, dict) and case.query:
        case.query = repaired(case.query)
    return case


def repaired(query: dict[str, Any]) -> dict[str, Any]:
    query = dict(query)
    # A cursor is a `next_cursor` the API handed out, never one made up.
    query.pop("cursor", None)
    # `days`, or `from`..`to` (`to` needs `from`), spanning at most 366 days.
    if "days" in query and ("from" in query or "to" in query):
        del query["days"]
    if ("from" in query or "to" in query) and not _fair_range(query.get("from"), query.get("to")):
        query.pop("from", None)
        query.pop("to", None)
    # A range's minimum is not above its maximum.
    for low, high in (("volume_min", "volume_max"), ("difficulty_min", "difficulty_max")):
        try:
            if float(query[low]) > float(query[high]):
                query[low], query[high] = query[high], query[low]
        except (KeyError, TypeError, ValueError):
            continue
    return query


def _instant(value: Any, end: bool = False) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            return datetime.combine(day, datetime.min.time(), UTC)
        moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fair_range(start: Any, end: Any) -> bool:
    """Unparsable values stay (they are invalid data, to be refused)."""
    lower = _instant(start)
    if start is not None and lower is None:
        return True
    upper = _instant(end, end=True) if end is not None else datetime.now(UTC) + timedelta(days=1)
    if end is not None and upper is None:
        return True
    if lower is None:
        return False  # `to` alone
    assert upper is not None
    return lower + timedelta(days=1) < upper < lower + MAX_RANGE - timedelta(days=1)
