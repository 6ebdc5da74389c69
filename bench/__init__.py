"""Benchmarks: runnable scripts that start their own servers and compare against a baseline.

Run them as modules from the repository root, e.g. `.venv/bin/python -m bench.ledger`.
See bench/README.md for what each one measures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> None:
    """A compact fixed-width table: the first `left` columns left-aligned, the rest right."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(parts).rstrip()

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def each_backend(dbs: Sequence[str], name: str) -> Iterator[tuple[str, str]]:
    """(db, url) for each backend asked for, one at a time: a SQLite file in a fresh temp
    dir, or a throwaway PostgreSQL server; engines disposed and the server stopped after."""
    from models.db import dispose_engines
    from ops.postgres_server import PostgresServer

    for db in dbs:
        if db == "sqlite":
            with tempfile.TemporaryDirectory(prefix="aijobs-bench-") as tmp:
                try:
                    yield db, f"sqlite:///{tmp}/{name}.db"
                finally:
                    dispose_engines()
        else:
            with PostgresServer(dbname="aijobs_bench") as server:
                try:
                    yield db, server.url
                finally:
                    dispose_engines()
