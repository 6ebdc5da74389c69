"""The keyword library through the API: CSV import (idempotent upsert), free browsing with
exact filters across pages, adding to a site within max_keywords; research metrics."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from models import LibraryKeyword
from models.db import transaction
from tests.support import auth, join_team, on_plan

ADMIN = {"X-Admin-Token": "test-admin-token"}
HEADER = "keyword,country,volume,difficulty,cpc,intent,topic"
COUNTRIES = ("us", "gb", "de")
TOPICS = ("fitness", "travel", "")
INTENTS = ("informational", "commercial", "transactional", "")


def csv_rows(n: int, seed: int = 7, volumes: int = 12) -> list[str]:
    """`n` distinct (keyword, country) rows; few distinct volumes, so pages end in ties."""
    rng = random.Random(seed)
    words = ["run", "running", "trail", "shoe", "shoes", "hike", "über", "best", "cheap"]
    rows = []
    for i in range(n):
        keyword = f"{rng.choice(words)} {rng.choice(words)} {i}"
        rows.append(
            f"{keyword},{COUNTRIES[i % 3]},{100 * rng.randrange(volumes)},{rng.randrange(101)},"
            f"{rng.randrange(500) / 100:.2f},{rng.choice(INTENTS)},{rng.choice(TOPICS)}"
        )
    return rows


def import_csv(client: Any, text: str, **headers: str) -> Any:
    return client.post(
        "/v1/admin/keyword-library/import",
        data=text.encode(),
        headers={**ADMIN, "Content-Type": "text/csv", **headers},
    )


def library_size() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(LibraryKeyword)) or 0


def on(client: Any, plan: str = "starter") -> str:
    return on_plan(client, plan, "lib@example.com")[0]


def browse_all(client: Any, key: str, limit: int, **filters: Any) -> list[int]:
    """Every id a browse returns, page by page, following next_cursor."""
    ids: list[int] = []
    cursor = None
    while True:
        query = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/keyword-library", query_string=query, headers=auth(key))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["data"]) <= limit
        ids += [row["id"] for row in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


# --- import -----------------------------------------------------------------------------


def test_ten_thousand_rows_imported_twice_are_ten_thousand_rows(client: Any) -> None:
    text = "\n".join([HEADER, *csv_rows(10_000)]) + "\n"

    first = import_csv(client, text)
    second = import_csv(client, text)

    assert first.status_code == second.status_code == 200, first.get_json()
    assert first.get_json() == {"rows": 10_000, "inserted": 10_000, "updated": 0, "unchanged": 0}
    assert second.get_json() == {"rows": 10_000, "inserted": 0, "updated": 0, "unchanged": 10_000}
    assert library_size() == 10_000


def test_an_import_updates_the_metrics_of_known_keywords(client: Any) -> None:
    import_csv(client, f"{HEADER}\nRunning  Shoes,US,1000,40,1.20,commercial,Fitness\n")

    again = import_csv(
        client,
        "country,keyword,volume,difficulty\nus,running shoes,1500,45\ngb,running shoes,9,9\n",
    )

    assert again.get_json() == {"rows": 2, "inserted": 1, "updated": 1, "unchanged": 0}
    with transaction() as session:
        rows = session.scalars(select(LibraryKeyword).order_by(LibraryKeyword.country)).all()
        got = [
            (r.keyword, r.country, r.volume, r.difficulty, r.cpc, r.intent, r.topic) for r in rows
        ]
    assert got == [
        ("running shoes", "gb", 9, 9, None, None, None),
        ("running shoes", "us", 1500, 45, None, None, None),  # a column left out is cleared
    ]


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (f"{HEADER}\nok,us,10,10,,,\nbad,us,ten,10,,,\nworse,us,10,101,,,\n", [3, 4]),
        (f"{HEADER}\nok,us,10,10,,,\nshort,us,10\n", [3]),
        (f"{HEADER}\nok,us,10,10,-1.00,,\nok2,usa,10,10,,,\n", [2, 3]),
        (f"{HEADER}\nok,us,10,10,1.001,,\n", [2]),
        (f"{HEADER}\nok,us,10,10,,guessing,\n", [2]),
        (f"{HEADER}\n,us,10,10,,,\n", [2]),
        (f"{HEADER}\nnul\x00,us,10,10,,,\n", [2]),
        (f'{HEADER}\n"unclosed,us,10,10,,,\n', [2]),
    ],
)
def test_a_file_with_bad_rows_imports_nothing_and_names_them(
    client: Any, text: str, lines: list[int]
) -> None:
    response = import_csv(client, text)

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert "nothing was imported" in error["message"]
    assert [e["line"] for e in error["errors"]] == lines
    assert library_size() == 0


@pytest.mark.parametrize(
    "text", ["", "keyword,volume\nx,1\n", "keyword,country,volume,difficulty,colour\n", "a,a\n"]
)
def test_a_bad_header_is_refused(client: Any, text: str) -> None:
    response = import_csv(client, text)
    assert response.status_code == 422
    assert "header" in response.get_json()["error"]["fields"]


def test_the_import_takes_csv_only_within_its_size_and_utf8(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_json = client.post("/v1/admin/keyword-library/import", json={"keyword": "k"}, headers=ADMIN)
    latin1 = client.post(
        "/v1/admin/keyword-library/import",
        data=f"{HEADER}\nstraße,de,10,10,,,\n".encode("latin-1"),
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    monkeypatch.setenv("KEYWORD_IMPORT_MAX_BYTES", "1000")
    too_big = import_csv(client, "\n".join([HEADER, *csv_rows(100)]))
    no_admin = client.post(
        "/v1/admin/keyword-library/import", data=HEADER, headers={"Content-Type": "text/csv"}
    )

    assert [as_json.status_code, latin1.status_code, too_big.status_code] == [422, 422, 422]
    assert "text/csv" in as_json.get_json()["error"]["message"]
    assert "UTF-8" in latin1.get_json()["error"]["message"]
    assert "too large" in too_big.get_json()["error"]["message"]
    assert no_admin.status_code == 401
    assert library_size() == 0


def test_a_byte_order_mark_and_crlf_lines_are_fine(client: Any) -> None:
    text = "\ufeff" + "\r\n".join([HEADER, "über schuhe,de,10,10,,,"]) + "\r\n"
    response = import_csv(client, text)
    assert response.get_json()["inserted"] == 1, response.get_json()


# --- browse -----------------------------------------------------------------------------


@pytest.fixture
def library(client: Any) -> list[LibraryKeyword]:
    response = import_csv(client, "\n".join([HEADER, *csv_rows(300)]))
    assert response.status_code == 200, response.get_json()
    with transaction() as session:
        return list(session.scalars(select(LibraryKeyword)))


FILTERS: list[dict[str, Any]] = [
    {},
    {"country": "us"},
    {"country": "GB", "volume_min": 300, "volume_max": 800},
    {"topic": "fitness", "difficulty_max": 50},
    {"difficulty_min": 20, "difficulty_max": 20},
    {"intent": "commercial", "country": "de", "volume_min": 1000},
    {"q": "run"},
    {"q": "Running S", "country": "us"},
    {"q": "üb", "volume_max": 500},
    {"q": "zzz"},
    {"q": "", "country": " "},  # empty search boxes filter nothing
    {"q": "o'b\\ %_"},
]


def expected_ids(rows: list[LibraryKeyword], filters: dict[str, Any]) -> list[int]:
    def keep(row: LibraryKeyword) -> bool:
        checks = [
            row.keyword.startswith(filters.get("q", "").lower()),
            (filters.get("country", "").strip().lower() or row.country) == row.country,
            filters.get("topic", row.topic) == row.topic,
            filters.get("intent", row.intent) == row.intent,
            filters.get("volume_min", 0) <= row.volume <= filters.get("volume_max", 10**9),
            filters.get("difficulty_min", 0)
            <= row.difficulty
            <= filters.get("difficulty_max", 100),
        ]
        return all(checks)

    chosen = sorted((r for r in rows if keep(r)), key=lambda r: (r.volume, r.id), reverse=True)
    return [r.id for r in chosen]


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("limit", [7, 100])
def test_browse_filters_are_exact_across_pages(
    client: Any, library: list[LibraryKeyword], filters: dict[str, Any], limit: int
) -> None:
    key = on(client, "free")

    got = browse_all(client, key, limit, **filters)

    assert got == expected_ids(library, filters)


def test_browse_shows_the_metrics_and_is_free(client: Any, library: list[LibraryKeyword]) -> None:
    key = on(client, "free")
    before = client.get("/v1/account", headers=auth(key)).get_json()["credits"]

    page = client.get("/v1/keyword-library?limit=1", headers=auth(key)).get_json()

    row = page["data"][0]
    assert set(row) == {
        "id", "keyword", "country", "volume", "difficulty", "cpc", "intent", "topic", "updated_at",
    }  # fmt: skip
    assert Decimal(row["cpc"]) >= 0
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"] == before


@pytest.mark.parametrize(
    "query",
    [
        {"volume_min": 10, "volume_max": 5},
        {"difficulty_max": 101},
        {"volume_min": "many"},
        {"intent": "curious"},
        {"country": "usa"},
        {"country": "1x"},
        {"cursor": "not-a-cursor"},
        {"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTl8MQ"},  # 99999999999999999999|1: beyond BIGINT
        {"cursor": "MXw5OTk5OTk5OTk5OTk5OTk5OTk5OQ"},  # 1|99999999999999999999
        {"cursor": "LTF8MQ"},  # -1|1: no volume is negative
        {"limit": 0},
        {"q": "x" * 101},
    ],
)
def test_bad_browse_queries_are_422(client: Any, query: dict[str, Any]) -> None:
    key = on(client, "free")
    response = client.get("/v1/keyword-library", query_string=query, headers=auth(key))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"


# --- into a site ------------------------------------------------------------------------


def test_adding_across_the_keyword_limit_adds_nothing(
    client: Any, library: list[LibraryKeyword]
) -> None:
    key = on(client)
    client.patch("/v1/admin/plans/starter", json={"max_keywords": 5}, headers=ADMIN)
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    client.post(
        "/v1/keywords", json={"site_id": site, "keywords": ["a", "b", "c"]}, headers=auth(key)
    )
    ids = [row.id for row in library[:3]]

    over = client.post(
        "/v1/keyword-library/add", json={"site_id": site, "ids": ids}, headers=auth(key)
    )

    assert over.status_code == 403
    error = over.get_json()["error"]
    assert (error["code"], error["current"], error["limit"], error["requested"]) == (
        "limit_reached", 3, 5, 3,
    )  # fmt: skip
    assert len(client.get("/v1/keywords", headers=auth(key)).get_json()["data"]) == 3

    fits = client.post(
        "/v1/keyword-library/add", json={"site_id": site, "ids": ids[:2]}, headers=auth(key)
    )
    again = client.post(
        "/v1/keyword-library/add", json={"site_id": site, "ids": ids[:2]}, headers=auth(key)
    )

    assert fits.status_code == 201, fits.get_json()
    added = {k["keyword"]: k for k in fits.get_json()["added"]}
    for row in library[:2]:
        saved = added[row.keyword]
        assert (saved["volume"], saved["difficulty"], saved["country"]) == (
            row.volume, row.difficulty, row.country,
        )  # fmt: skip
        assert saved["cpc"] == (str(row.cpc) if row.cpc is not None else None)
    assert again.get_json()["added"] == []
    assert sorted(again.get_json()["skipped"]) == sorted(added)
    limits = client.get("/v1/account", headers=auth(key)).get_json()["limits"]
    assert limits["keywords"] == {"used": 5, "limit": 5}


def test_unknown_library_ids_add_nothing(client: Any, library: list[LibraryKeyword]) -> None:
    key = on(client)
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    ids = [library[0].id, 999_999]

    response = client.post(
        "/v1/keyword-library/add", json={"site_id": site, "ids": ids}, headers=auth(key)
    )

    assert response.status_code == 404
    assert "999999" in response.get_json()["error"]["message"]
    assert client.get("/v1/keywords", headers=auth(key)).get_json()["data"] == []


def test_viewers_browse_but_do_not_add(client: Any, library: list[LibraryKeyword]) -> None:
    owner = on(client)
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(owner)).get_json()["id"]
    viewer = join_team(client, owner, "v@example.com", "viewer")["key"]

    assert client.get("/v1/keyword-library", headers=auth(viewer)).status_code == 200
    refused = client.post(
        "/v1/keyword-library/add",
        json={"site_id": site, "ids": [library[0].id]},
        headers=auth(viewer),
    )
    assert refused.status_code == 403


# --- research results carry their metrics ----------------------------------------------------


def test_research_results_carry_metrics_and_save_to_a_site(client: Any) -> None:
    key = on(client)
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]

    research = client.post(
        "/v1/keyword-research", json={"seed": "trail shoes", "limit": 5, "country": "gb"},
        headers=auth(key),
    )  # fmt: skip

    assert research.status_code == 200, research.get_json()
    results = research.get_json()["keywords"]
    assert len(results) == 5
    for row in results:
        assert set(row) == {"keyword", "volume", "difficulty", "cpc", "country"}
        assert isinstance(row["volume"], int)
        assert 0 <= row["difficulty"] <= 100
        assert Decimal(row["cpc"]) == Decimal(row["cpc"]).quantize(Decimal("0.01"))
        assert row["country"] == "gb"
    saved = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": results}, headers=auth(key)
    )
    assert saved.status_code == 201, saved.get_json()
    listed = client.get("/v1/keywords", headers=auth(key)).get_json()["data"]
    assert sorted(
        (k["keyword"], k["volume"], k["difficulty"], k["cpc"], k["country"]) for k in listed
    ) == sorted(
        (r["keyword"], r["volume"], r["difficulty"], r["cpc"], r["country"]) for r in results
    )


@pytest.mark.parametrize(
    "item",
    [
        {"keyword": "k", "volume": -1},
        {"keyword": "k", "difficulty": 101},
        {"keyword": "k", "cpc": "0.001"},
        {"keyword": "k", "cpc": "-1"},
        {"keyword": "k", "country": "US"},
        {"keyword": "k", "intent": "nosy"},
        {"keyword": "k", "colour": "red"},
    ],
)
def test_bad_keyword_metrics_are_422(client: Any, item: dict[str, Any]) -> None:
    key = on(client)
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    response = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": ["ok", item]}, headers=auth(key)
    )
    assert response.status_code == 422, response.get_json()
    assert client.get("/v1/keywords", headers=auth(key)).get_json()["data"] == []
