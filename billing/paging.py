"""Cursor pagination, one set of rules for every listing (jobs, credits, keywords, ...).

A cursor is opaque to clients: base64 of the sort key of the last row served. Listings
ordered by time carry (created_at, id); listings ordered by an integer id carry the id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_

from billing.errors import InvalidInput
from models import as_utc

MAX_PAGE_SIZE = 100
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: list[T]
    next_cursor: str | None

    def body(self, view: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
        """The listing's response: `{"data": [...], "next_cursor": ...}`."""
        return {"data": [view(row) for row in self.rows], "next_cursor": self.next_cursor}


def page_size(limit: int) -> int:
    """The one check of `limit` every listing applies."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE_SIZE}.",
            fields={"limit": f"an integer from 1 to {MAX_PAGE_SIZE}"},
        )
    return limit


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid() from None
    if "\x00" in text:  # PostgreSQL text cannot hold it; no cursor we issue has one
        raise _invalid()
    return text


def _invalid() -> InvalidInput:
    return InvalidInput("Invalid cursor.", fields={"cursor": "invalid"})


def _bigint(text: str, *, least: int = 1) -> int:
    """An integer from `least` that fits a BIGINT: a larger one would not even bind on
    SQLite (PostgreSQL refuses it too), and no row of ours has one."""
    try:
        value = int(text)
    except ValueError:
        raise _invalid() from None
    if not least <= value < 2**63:
        raise _invalid()
    return value


def decode_time_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at in UTC, id) of the last row served. A time that UTC cannot represent
    (0001-01-01T00:00+01:00) is no row's: refused here, not overflowing in a caller."""
    first, _, second = _decode(cursor).partition("|")
    try:
        return as_utc(datetime.fromisoformat(first)).astimezone(UTC), second
    except (ValueError, OverflowError):
        raise _invalid() from None


def decode_time_int_cursor(cursor: str) -> tuple[datetime, int]:
    """(created_at in UTC, id) of the last row served, for rows with an integer id."""
    when, row_id = decode_time_cursor(cursor)
    return when, _bigint(row_id)


def decode_int_cursor(cursor: str) -> int:
    """A positive id that fits a BIGINT."""
    return _bigint(_decode(cursor))


def decode_int_pair_cursor(cursor: str) -> tuple[int, int]:
    """(sort value, id) of the last row served, for listings ordered by a non-negative
    integer column."""
    first, _, second = _decode(cursor).partition("|")
    return _bigint(first, least=0), _bigint(second)


def page_of(rows: Sequence[T], limit: int, cursor_of: Callable[[T], str]) -> Page[T]:
    """`rows` were fetched with `limit + 1`: keep `limit`, and if there were more, the
    cursor of the last row kept."""
    if len(rows) > limit:
        kept = list(rows[:limit])
        return Page(kept, cursor_of(kept[-1]))
    return Page(list(rows), None)


def newest_first(query: Select[Any], entity: Any, cursor: str | None, limit: int) -> Select[Any]:
    """Order `entity` rows (with `created_at` and a string `id`) newest first, after the
    `cursor`'s row, fetching `limit + 1` for `page_of`."""
    if cursor:
        when, row_id = decode_time_cursor(cursor)
        query = query.where(
            or_(entity.created_at < when, and_(entity.created_at == when, entity.id < row_id))
        )
    return query.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)


def time_cursor(row: Any) -> str:
    """The cursor after `row` in a `newest_first` listing."""
    return encode_cursor(as_utc(row.created_at).isoformat(), row.id)
