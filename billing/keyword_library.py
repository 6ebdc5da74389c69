"""The keyword library: admins import it from CSV, customers browse it for free and copy
rows into their sites (counted against max_keywords, all or none, like a bulk import).

Import is an upsert keyed on (keyword, country), so the same file twice changes nothing;
a file with any bad row writes nothing and names the bad lines. Browsing is ordered by
(volume DESC, id DESC) and paged by that pair, so every filter stays exact across page
boundaries; each filter is served by an index (models/keyword_library.py), and text
search is a prefix match: one range of the (keyword, country) index, which compares
bytes on both databases (SQLite's BINARY collation, PostgreSQL's "C").
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    String,
    Table,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from billing.errors import InvalidInput, NotFound
from billing.keywords import COUNTRY_CODE, Import, KeywordEntry, add_keywords
from billing.paging import Page, decode_int_pair_cursor, encode_cursor, page_of, page_size
from billing.sites import get_site
from models import KEYWORD_INTENTS, Account, LibraryKeyword, as_utc

CSV_COLUMNS = ("keyword", "country", "volume", "difficulty", "cpc", "intent", "topic")
REQUIRED_COLUMNS = ("keyword", "country", "volume", "difficulty")
MAX_TOPIC_LENGTH = 100
IMPORT_BATCH = 1000
MAX_REPORTED_ERRORS = 20
# SQLite: a text prefix matching fewer library rows than this is searched by its range.
# Walking the range reads its m rows; walking the volume index for a page of 50 reads about
# 50 x N / m; they cross near m = sqrt(50 x N): ~7,000 for a library of 1,000,000 rows.
PREFIX_PROBE = 8000
_METRICS = ("volume", "difficulty", "cpc", "intent", "topic")
_VIEW_COLUMNS = ("id", "keyword", "country", *_METRICS, "updated_at")
_table = cast(Table, LibraryKeyword.__table__)


@dataclass(frozen=True)
class ImportResult:
    rows: int
    inserted: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class LibraryFilter:
    """What a browse asks for; every field optional, ranges inclusive."""

    q: str | None = None
    country: str | None = None
    topic: str | None = None
    intent: str | None = None
    volume_min: int | None = None
    volume_max: int | None = None
    difficulty_min: int | None = None
    difficulty_max: int | None = None

    def __post_init__(self) -> None:
        for low, high in (("volume_min", "volume_max"), ("difficulty_min", "difficulty_max")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise InvalidInput(f"{low} is above {high}.", fields={low: f"at most {high}"})
        if self.country is not None and not COUNTRY_CODE.match(self.country):
            raise InvalidInput(
                "country must be a 2-letter country code.", fields={"country": "e.g. us"}
            )
        if self.intent is not None and self.intent not in KEYWORD_INTENTS:
            raise InvalidInput(
                f"Unknown intent {self.intent!r}.",
                fields={"intent": f"one of {', '.join(KEYWORD_INTENTS)}"},
            )


def normalize_keyword(value: str) -> str:
    """Library keywords are stored lowercase with single spaces; searches are too."""
    return " ".join(value.lower().split())


# --- import ---------------------------------------------------------------------------


def import_csv(session: Session, lines: Iterable[str], now: datetime) -> ImportResult:
    """Upsert every row of a CSV (header first) in batches, in the caller's transaction.

    Rows stream through: at most one batch is held in memory. A bad row stops the
    writing (the caller's transaction rolls back), and reading goes on only to report up
    to MAX_REPORTED_ERRORS bad lines at once.
    """
    reader = csv.reader(lines)
    records = _records(reader)
    columns = _header(next(records, None))
    before = _count(session)
    batch: dict[tuple[str, str], dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    rows = affected = 0
    for record in records:
        if not any(cell.strip() for cell in record):
            continue
        try:
            row = _parse_row(columns, record)
        except InvalidInput as exc:
            errors.append({"line": reader.line_num, "message": exc.message})
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
            continue
        rows += 1
        if errors:
            continue
        batch[(row["keyword"], row["country"])] = {**row, "created_at": now, "updated_at": now}
        if len(batch) >= IMPORT_BATCH:
            affected += _upsert(session, list(batch.values()))
            batch.clear()
    if errors:
        raise InvalidInput(
            f"The CSV has invalid rows (first on line {errors[0]['line']}: "
            f"{errors[0]['message']}); nothing was imported.",
            errors=errors,
        )
    if batch:
        affected += _upsert(session, list(batch.values()))
    inserted = _count(session) - before
    if inserted:
        _analyze(session)
    return ImportResult(
        rows=rows, inserted=inserted, updated=affected - inserted, unchanged=rows - affected
    )


def _records(reader: Any) -> Iterator[list[str]]:
    """The CSV's records; a malformed file (an unclosed quote ...) is refused, naming the line."""
    while True:
        try:
            record: list[str] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidInput(
                f"The CSV cannot be read at line {reader.line_num}: {exc}; nothing was imported.",
                errors=[{"line": reader.line_num, "message": str(exc)}],
            ) from None
        yield record


def _header(record: list[str] | None) -> list[str]:
    columns = [cell.strip().lower() for cell in record or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if missing or unknown or len(set(columns)) != len(columns):
        raise InvalidInput(
            f"The CSV header must name the columns {', '.join(CSV_COLUMNS)} "
            f"({', '.join(REQUIRED_COLUMNS)} required), each once.",
            fields={
                "header": f"missing: {', '.join(missing) or 'none'}; "
                f"unknown: {', '.join(unknown) or 'none'}"
            },
        )
    return columns


def _parse_row(columns: list[str], record: list[str]) -> dict[str, Any]:
    if len(record) != len(columns):
        raise InvalidInput(f"expected {len(columns)} fields, found {len(record)}")
    if any("\x00" in cell for cell in record):
        raise InvalidInput("a field contains a NUL character")
    cells = {name: cell.strip() for name, cell in zip(columns, record, strict=True)}
    topic = cells.get("topic", "").lower() or None
    if topic is not None and len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidInput(f"topic must be at most {MAX_TOPIC_LENGTH} characters")
    entry = KeywordEntry(
        keyword=normalize_keyword(cells["keyword"]),
        volume=_number(cells, "volume", int),
        difficulty=_number(cells, "difficulty", int),
        cpc=_number(cells, "cpc", Decimal) if cells.get("cpc") else None,
        country=cells["country"].lower(),
        intent=cells.get("intent", "").lower() or None,
    )
    return {
        "keyword": entry.keyword,
        "country": entry.country,
        "volume": entry.volume,
        "difficulty": entry.difficulty,
        "cpc": entry.cpc,
        "intent": entry.intent,
        "topic": topic,
    }


def _number(cells: dict[str, str], name: str, kind: type[Any]) -> Any:
    raw = cells.get(name, "")
    try:
        value = kind(raw)
    except (ValueError, InvalidOperation):
        raise InvalidInput(f"{name} must be a number, not {raw[:40]!r}") from None
    return value


def _upsert(session: Session, rows: list[dict[str, Any]]) -> int:
    """One INSERT .. ON CONFLICT DO UPDATE for the batch; rows whose metrics did not
    change are not rewritten. Returns the rows inserted or updated."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(_table).values(rows)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[_table.c.keyword, _table.c.country],
        set_={**{name: excluded[name] for name in _METRICS}, "updated_at": excluded.updated_at},
        where=or_(*(_table.c[name].is_distinct_from(excluded[name]) for name in _METRICS)),
    )
    # Drivers report an INSERT's rowcount only when asked to keep it.
    result = session.execute(statement.execution_options(preserve_rowcount=True))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(_table)) or 0


def _analyze(session: Session) -> None:
    """Fresh statistics, so each planner picks the index that fits a browse's filters."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA analysis_limit=1000"))
    session.execute(text("ANALYZE keyword_library"))


# --- browse ---------------------------------------------------------------------------


def browse(
    session: Session, filters: LibraryFilter, cursor: str | None, limit: int
) -> Page[Row[Any]]:
    """A page of library rows, as plain rows: browsing reads many and changes none, so it
    skips the ORM's identity map (the bench measures what is left above the bare query)."""
    limit = page_size(limit)
    narrow = prefix_is_narrow(session, filters)
    rows = session.execute(browse_query(filters, cursor, limit, narrow)).all()
    return page_of(rows, limit, lambda row: encode_cursor(str(row.volume), str(row.id)))


def prefix_is_narrow(session: Session, filters: LibraryFilter) -> bool | None:
    """On SQLite, whether the text prefix matches few rows (None elsewhere, or without one).

    SQLite keeps no histograms (no STAT4), so it cannot tell a narrow prefix range from a
    wide one by itself: walking a narrow range and sorting it is quick, a wide one (a single
    letter: a few percent of the library) is quicker found by walking the volume index. A
    count of the range, capped at PREFIX_PROBE entries of the covering (keyword, country)
    index, tells them apart in well under a millisecond; PostgreSQL estimates it itself.
    """
    if not filters.q or session.get_bind().dialect.name != "sqlite":
        return None
    probe: Select[Any] = (
        select(literal_column("1")).where(*_prefix_terms(filters.q)).limit(PREFIX_PROBE)
    )
    found = session.scalar(select(func.count()).select_from(probe.subquery()))
    return (found or 0) < PREFIX_PROBE


def browse_query(
    filters: LibraryFilter, cursor: str | None, limit: int, narrow: bool | None = None
) -> Select[Any]:
    """The one statement a browse runs (the bench times it raw, next to `browse`);
    `narrow` is `prefix_is_narrow`'s answer, told to SQLite's planner."""
    c = _table.c
    query = select(*(c[name] for name in _VIEW_COLUMNS))
    if filters.q:
        query = query.where(*(_hinted(term, narrow) for term in _prefix_terms(filters.q)))
    for name in ("country", "topic", "intent"):
        value = getattr(filters, name)
        if value is not None:
            query = query.where(c[name] == value)
    for name in ("volume", "difficulty"):
        low, high = getattr(filters, f"{name}_min"), getattr(filters, f"{name}_max")
        if low is not None:
            query = query.where(c[name] >= low)
        if high is not None:
            query = query.where(c[name] <= high)
    if cursor:
        volume, last_id = decode_int_pair_cursor(cursor)
        query = query.where(tuple_(c.volume, c.id) < (volume, last_id))
    return query.order_by(c.volume.desc(), c.id.desc()).limit(limit + 1)


def _prefix_terms(q: str) -> list[ColumnElement[bool]]:
    """`keyword` starts with the prefix: one range of the (keyword, country) index."""
    prefix = normalize_keyword(q)
    terms = [_table.c.keyword >= _planned(prefix)]
    upper = _after_prefix(prefix)
    if upper is not None:
        terms.append(_table.c.keyword < _planned(upper))
    return terms


def _planned(value: str) -> BindParameter[str]:
    """A prefix bound written into the SQL (safely quoted) rather than sent as a parameter:
    PostgreSQL then plans each prefix with its own selectivity, never with a generic plan
    cached for another (a rare prefix walking the whole volume index)."""
    return literal(value, String(), literal_execute=True)


def _hinted(term: ColumnElement[bool], narrow: bool | None) -> ColumnElement[bool]:
    """The prefix term with SQLite's likelihood(): a narrow range is searched by the
    keyword index, a wide one left to the volume-ordered walk."""
    if narrow is None:
        return term
    chance = "0.001" if narrow else "0.9"
    # Untyped: a Boolean would render as `likelihood(...) = 1`, which hides the range.
    return cast(ColumnElement[bool], func.likelihood(term, literal_column(chance)))


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (code point order,
    which is UTF-8 byte order); None when there is none."""
    while prefix:
        last = ord(prefix[-1]) + 1
        if 0xD800 <= last <= 0xDFFF:  # surrogates cannot be stored: skip past them
            last = 0xE000
        if last <= 0x10FFFF:
            return prefix[:-1] + chr(last)
        prefix = prefix[:-1]
    return None


# --- into a site ----------------------------------------------------------------------


def add_to_site(session: Session, account: Account, site_id: str, ids: Sequence[int]) -> Import:
    """Copy library rows (with their metrics) into a site: all or none, like a bulk import."""
    get_site(session, account.id, site_id)
    wanted = list(dict.fromkeys(ids))
    rows = {
        row.id: row
        for row in session.scalars(select(LibraryKeyword).where(LibraryKeyword.id.in_(wanted)))
    }
    missing = [i for i in wanted if i not in rows]
    if missing:
        shown = ", ".join(map(str, missing[:20]))
        raise NotFound(f"Keyword library ids not found: {shown}.", ids=missing[:20])
    entries = [
        KeywordEntry(
            keyword=row.keyword,
            volume=row.volume,
            difficulty=row.difficulty,
            cpc=row.cpc,
            country=row.country,
            intent=row.intent,
        )
        for row in (rows[i] for i in wanted)
    ]
    return add_keywords(session, account, site_id, entries)


def library_view(row: Row[Any] | LibraryKeyword) -> dict[str, Any]:
    return {
        "id": row.id,
        "keyword": row.keyword,
        "country": row.country,
        "volume": row.volume,
        "difficulty": row.difficulty,
        "cpc": str(row.cpc) if row.cpc is not None else None,
        "intent": row.intent,
        "topic": row.topic,
        "updated_at": as_utc(row.updated_at).isoformat(),
    }
