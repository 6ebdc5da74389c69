"""The keyword library in billing: the import streams in batches, and a prefix is exactly
one range of the keyword index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from billing import keyword_library
from billing.keyword_library import IMPORT_BATCH, LibraryFilter, browse, normalize_keyword
from models import LibraryKeyword, utcnow
from models.db import transaction

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)


@given(prefix=text, value=text)
def test_a_prefix_is_exactly_one_range(prefix: str, value: str) -> None:
    """`value` starts with `prefix` exactly when prefix <= value < _after_prefix(prefix),
    in code point order (UTF-8 byte order: SQLite BINARY, PostgreSQL "C")."""
    upper = keyword_library._after_prefix(prefix)

    def in_range(candidate: str) -> bool:
        return prefix <= candidate and (upper is None or candidate < upper)

    assert value.startswith(prefix) == in_range(value)
    assert in_range(prefix + value)  # every extension is inside: the check is not vacuous


def test_the_top_code_point_has_no_successor() -> None:
    assert keyword_library._after_prefix("\U0010ffff") is None
    assert keyword_library._after_prefix("a\U0010ffff") == "b"
    assert keyword_library._after_prefix("\ud7ff") == "\ue000"


def test_keywords_are_normalized_for_storage_and_search() -> None:
    assert normalize_keyword("  Running   SHOES \t") == "running shoes"


def test_the_import_writes_batch_by_batch_while_it_reads(db_url: str) -> None:
    """At most one batch is held in memory: by the time line 2.5 batches in is read, two
    full batches are already in the table (the same transaction sees them)."""
    seen: list[int] = []

    with transaction() as session:

        def lines() -> Iterator[str]:
            yield "keyword,country,volume,difficulty\n"
            for i in range(3 * IMPORT_BATCH):
                if i == 2 * IMPORT_BATCH + IMPORT_BATCH // 2:
                    count = select(func.count()).select_from(LibraryKeyword)
                    seen.append(session.scalar(count) or 0)
                yield f"keyword {i},us,{i},{i % 101}\n"

        result = keyword_library.import_csv(session, lines(), utcnow())

    assert seen == [2 * IMPORT_BATCH]
    assert (result.rows, result.inserted) == (3 * IMPORT_BATCH, 3 * IMPORT_BATCH)


def test_a_duplicate_line_in_one_file_keeps_the_last(db_url: str) -> None:
    lines = ["keyword,country,volume,difficulty\n", "a,us,1,1\n", "a,us,2,2\n"]
    with transaction() as session:
        result = keyword_library.import_csv(session, lines, utcnow())
        page = browse(session, LibraryFilter(q="a"), None, 10)
    assert (result.rows, result.inserted) == (2, 1)
    assert [(row.volume, row.difficulty) for row in page.rows] == [(2, 2)]


def _all_ids(session: Any, filters: LibraryFilter) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        page = browse(session, filters, cursor, 7)
        ids += [row.id for row in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            return ids


def test_wide_and_narrow_prefixes_find_the_same_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite searches a prefix by its range or by the volume walk depending on the probe;
    both plans return the same pages (PostgreSQL plans it itself: the probe is skipped)."""
    lines = ["keyword,country,volume,difficulty\n"] + [
        f"{word} {i},{('us', 'gb')[i % 2]},{(i * 37) % 500},{i % 101}\n"
        for i, word in enumerate(["best shoes", "best hats", "buy shoes", "cheap hats"] * 40)
    ]
    with transaction() as session:
        keyword_library.import_csv(session, lines, utcnow())
    searches = [LibraryFilter(q="b"), LibraryFilter(q="best", country="us"), LibraryFilter(q="c")]
    with transaction() as session:
        narrow = [_all_ids(session, f) for f in searches]
        monkeypatch.setattr(keyword_library, "PREFIX_PROBE", 5)
        wide = [_all_ids(session, f) for f in searches]
        probed = [keyword_library.prefix_is_narrow(session, f) for f in searches]
    assert wide == narrow
    assert [len(ids) for ids in narrow] == [120, 40, 40]
    if db_url.startswith("sqlite"):
        assert probed == [False, False, False]
    else:
        assert probed == [None, None, None]
