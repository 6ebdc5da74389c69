"""Keyword library browse on 1,000,000 rows: `billing.keyword_library.browse` against the
raw indexed query, same database, same run, with each query's plan.

  ours  a read-only Session per call (as the API's GET runs it: pool checkout with its
        pre-ping, BEGIN, the query, ROLLBACK), `browse()` and `library_view` on every
        row: the listing's body.
  stmt  the statement `browse_query()` builds, bound parameters, executed by SQLAlchemy
        on a connection held open: what the query costs through the library, without
        the per-request session (nor, on SQLite, the prefix probe `browse()` runs first).
  raw   the same SQL, literal-bound, on a bare DBAPI cursor, rows fetched as tuples: the
        floor for that index walk.

Each shape (a filter set, on its first page and on page 10 through the cursor) runs
`--reps` times per side, alternating, after a warm-up; the table gives p50 and p95 in
milliseconds and raw/ours at p50 (1.0 = no overhead above the query itself). Both sides
must return the same ids. Rows are generated (deterministic, long-tailed volumes with many
ties), loaded with COPY (PostgreSQL) or executemany (SQLite) into the migrated table with
its indexes, then ANALYZEd, as the import does.

    .venv/bin/python -m bench.keyword_library                 # 1,000,000 rows, both backends
    .venv/bin/python -m bench.keyword_library --db postgresql --rows 200000
    .venv/bin/python -m bench.keyword_library --quick         # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/keyword_library.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Connection, Engine, text

from bench import each_backend, print_table
from billing.keyword_library import (
    LibraryFilter,
    browse,
    browse_query,
    library_view,
    prefix_is_narrow,
)
from models import KEYWORD_INTENTS, utcnow
from models.db import get_engine, session_factory
from ops.cli import migrate

PAGE = 50
DEEP_PAGE = 10
COUNTRIES = ("us", "gb", "de", "fr", "es", "it", "ca", "au", "in", "br")
# fmt: off
TOPICS = (
    "fitness", "travel", "cooking", "finance", "gardening", "parenting", "gaming", "fashion",
    "music", "software", "pets", "health", "education", "cars", "beauty", "photography",
    "crafts", "outdoors", "home", "sports",
)
HEADS = (
    "best", "cheap", "how to", "what is", "top", "easy", "free", "buy", "review", "online",
    "diy", "quick", "healthy", "modern", "simple", "vegan", "organic", "luxury", "budget",
    "small", "large", "portable", "smart", "electric", "wireless", "professional", "beginner",
    "advanced", "kids", "women", "men", "outdoor", "indoor", "natural", "homemade", "classic",
    "new", "used", "local",
)
NOUNS = (
    "running shoes", "yoga mat", "coffee maker", "road bike", "tent", "backpack", "recipe",
    "pasta", "salad", "bread", "laptop", "phone", "camera", "drone", "guitar", "piano",
    "garden", "plants", "dog food", "cat toys", "stroller", "crib", "car seat", "lipstick",
    "shampoo", "sunscreen", "watch", "headphones", "speaker", "desk", "chair", "sofa", "lamp",
    "rug", "blender", "grill", "knife", "pan", "kettle", "mixer", "jacket", "boots", "gloves",
    "scarf",
)
# fmt: on
COLUMNS = (
    "keyword",
    "country",
    "volume",
    "difficulty",
    "cpc",
    "intent",
    "topic",
    "created_at",
    "updated_at",
)  # fmt: skip
SHAPES: list[tuple[str, LibraryFilter]] = [
    ("country+volume+difficulty", LibraryFilter(country="us", volume_min=500, volume_max=20_000,
                                                difficulty_max=40)),
    ("prefix+country", LibraryFilter(q="best r", country="us")),
    ("1-letter prefix", LibraryFilter(q="b")),
    ("1-letter prefix, no match", LibraryFilter(q="z")),
    ("topic+difficulty", LibraryFilter(topic="fitness", difficulty_min=20, difficulty_max=60)),
    ("intent+volume range", LibraryFilter(intent="transactional", volume_min=100, volume_max=300)),
    ("unfiltered", LibraryFilter()),
]  # fmt: skip


@dataclass(frozen=True)
class Timing:
    db: str
    shape: str
    page: int
    rows: int
    ours: list[float]
    stmt: list[float]
    raw: list[float]

    def p(self, side: str, q: float) -> float:
        values = sorted(getattr(self, side))
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    def ratio(self, side: str = "ours") -> float:
        return statistics.median(self.raw) / statistics.median(getattr(self, side))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list of backends")
    parser.add_argument("--rows", type=int, default=1_000_000, help="library rows to load")
    parser.add_argument("--reps", type=int, default=100, help="timed calls per side and shape")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per side")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.reps, args.warmup = 20_000, 10, 2
    args.db = [name.strip() for name in args.db.split(",") if name.strip()]
    if not set(args.db) <= {"sqlite", "postgresql"}:
        parser.error("--db takes sqlite and/or postgresql")
    if min(args.rows, args.reps) < 1 or args.warmup < 0:
        parser.error("--rows and --reps must be >= 1")
    return args


# --- data -------------------------------------------------------------------------------


def generated(n: int) -> Iterator[tuple[Any, ...]]:
    """n distinct (keyword, country) rows; volumes long-tailed with many ties."""
    now = utcnow()
    for i in range(n):
        h = (i * 2654435761) & 0xFFFFFFFF
        keyword = f"{HEADS[i % len(HEADS)]} {NOUNS[(i // len(HEADS)) % len(NOUNS)]} {i}"
        yield (
            keyword,
            COUNTRIES[(h >> 3) % len(COUNTRIES)],
            max(10, 1_000_000 // (1 + h % 10_007) // 10 * 10),
            (h >> 8) % 101,
            Decimal(h % 2000) / 100,
            KEYWORD_INTENTS[(h >> 4) % len(KEYWORD_INTENTS)],
            TOPICS[(h >> 12) % len(TOPICS)],
            now,
            now,
        )


def load(engine: Engine, n: int) -> float:
    """Bulk-load n rows into the migrated table (indexes in place) and ANALYZE; seconds."""
    started = time.perf_counter()
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        if engine.dialect.name == "postgresql":
            with cursor.copy(f"COPY keyword_library ({', '.join(COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in generated(n):
                    copy.write_row(row)
        else:
            marks = ", ".join("?" * len(COLUMNS))
            cursor.execute("BEGIN")
            cursor.executemany(
                f"INSERT INTO keyword_library ({', '.join(COLUMNS)}) VALUES ({marks})",
                ((*row[:4], str(row[4]), *row[5:7], row[7].isoformat(" "), row[8].isoformat(" "))
                 for row in generated(n)),
            )  # fmt: skip
        connection.commit()
        cursor.execute("ANALYZE keyword_library")
        connection.commit()
    finally:
        connection.close()
    return time.perf_counter() - started


# --- the two sides ----------------------------------------------------------------------


def ours(url: str, filters: LibraryFilter, cursor: str | None) -> tuple[list[int], str | None]:
    with session_factory(url, read_only=True)() as session:
        page = browse(session, filters, cursor, PAGE)
        body = page.body(library_view)
    return [row["id"] for row in body["data"]], body["next_cursor"]


def statement(url: str, filters: LibraryFilter, cursor: str | None) -> Any:
    """The statement `browse()` runs for these filters (on SQLite after its prefix probe)."""
    with session_factory(url, read_only=True)() as session:
        narrow = prefix_is_narrow(session, filters)
    return browse_query(filters, cursor, PAGE, narrow)


def raw_sql(engine: Engine, query: Any) -> str:
    return str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def stmt(connection: Connection, query: Any) -> list[int]:
    ids = [row[0] for row in connection.execute(query).all()[:PAGE]]
    connection.rollback()
    return ids


def raw(connection: Any, sql: str) -> list[int]:
    cursor = connection.cursor()
    cursor.execute(sql)
    rows = cursor.fetchall()
    cursor.close()
    connection.rollback()  # end the read, as a request would
    return [row[0] for row in rows[:PAGE]]


def plan(engine: Engine, sql: str) -> list[str]:
    explain = (
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
        if engine.dialect.name == "postgresql"
        else "EXPLAIN QUERY PLAN "
    )
    with engine.connect() as conn:
        rows = conn.execute(text(explain + sql)).all()
    return [str(row[-1]) for row in rows]


def cursor_at(url: str, filters: LibraryFilter, page: int) -> str | None:
    cursor = None
    for _ in range(page - 1):
        _, cursor = ours(url, filters, cursor)
        if cursor is None:
            break
    return cursor


def time_shape(
    db: str, url: str, engine: Engine, name: str, filters: LibraryFilter, page: int, args: Any
) -> Timing:
    cursor = cursor_at(url, filters, page) if page > 1 else None
    query = statement(url, filters, cursor)
    sql = raw_sql(engine, query)
    sides: dict[str, Callable[[], list[int]]] = {}
    with ExitStack() as stack:
        dbapi = engine.raw_connection()
        stack.callback(dbapi.close)
        held = stack.enter_context(engine.connect())
        sides = {
            "ours": lambda: ours(url, filters, cursor)[0],
            "stmt": lambda: stmt(held, query),
            "raw": lambda: raw(dbapi, sql),
        }
        expected = sides["ours"]()
        if any(side() != expected for side in sides.values()):
            raise RuntimeError(f"{db} {name}: the sides returned different rows")
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for rep in range(args.warmup + args.reps):
            for side, call in sides.items():
                started = time.perf_counter()
                call()
                if rep >= args.warmup:
                    seconds[side].append(time.perf_counter() - started)
    return Timing(db, name, page, len(expected), **seconds)


def run_backend(db: str, url: str, args: argparse.Namespace) -> list[Timing]:
    migrate(url)
    engine = get_engine(url)
    seconds = load(engine, args.rows)
    print(f"{db}: loaded {args.rows:,} rows in {seconds:.1f} s (COPY/executemany + ANALYZE)")
    timings: list[Timing] = []
    for name, filters in SHAPES:
        print(f"\n{db} plan, {name}, first page:")
        for line in plan(engine, raw_sql(engine, statement(url, filters, None))):
            print("   ", line)
        for page in (1, DEEP_PAGE):
            timings.append(time_shape(db, url, engine, name, filters, page, args))
    return timings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"rows={args.rows:,} reps={args.reps} warmup={args.warmup} page={PAGE}", flush=True)
    timings: list[Timing] = []
    for db, url in each_backend(args.db, "library"):
        timings += run_backend(db, url, args)
    print()
    print_table(
        ["db", "shape", "page", "rows", "ours p50 ms", "ours p95 ms", "stmt p50 ms",
         "raw p50 ms", "raw p95 ms", "raw/ours p50", "raw/stmt p50"],
        [
            [t.db, t.shape, t.page, t.rows, t.p("ours", 0.5), t.p("ours", 0.95),
             t.p("stmt", 0.5), t.p("raw", 0.5), t.p("raw", 0.95), f"{t.ratio():.3f}",
             f"{t.ratio('stmt'):.3f}"]
            for t in timings
        ],
        left=2,
    )  # fmt: skip
    print("ours = browse() in a read-only Session + library_view per row; stmt = its statement")
    print("through SQLAlchemy on a held connection; raw = the same SQL on a bare DBAPI cursor.")
    print("All three returned the same ids for every shape.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
