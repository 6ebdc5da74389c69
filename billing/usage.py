"""Usage analytics: what an account spent on what, where, on which model, and when.

Every figure is summed from `credit_usage_logs`, the row settle writes next to each
deduction (same credits, same transaction), never from job statuses: a billed job counts
whatever status it ended in, so the sums stay equal to the ledger's deductions. USD is
the log's `cost_usd` (priced from `AIModelConfig` when the job settled), summed as whole
micro-dollars so no database turns money into a float, and served as a string.

An insight is one pass over the account's rows in the window (index
`ix_credit_usage_logs_account_created_id`, which on PostgreSQL carries every column summed,
so the pass reads only the account's index entries): a GROUP BY on (local day, operation,
site, model, source), rolled up here into every breakdown and the timeline. A row is
`automation` when its job belongs to an automation run (settle copies `automation_id`).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import MAXYEAR, MINYEAR, UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from functools import cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Row,
    Select,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from billing.accounts import credits_view
from billing.errors import InvalidInput
from billing.job_views import get_job
from billing.limits import limits_report
from billing.operations import OPERATIONS
from billing.paging import Page, decode_time_int_cursor, encode_cursor, page_of, page_size
from billing.periods import add_months, period_containing
from billing.sites import get_site
from models import JOB_STATUSES, Account, AIModelConfig, CreditUsageLog, Job, Site, as_utc

INSIGHT_DAYS = (7, 30, 90)
DEFAULT_DAYS = 30
WEEKLY_OVER_DAYS = 31  # longer timelines are weekly (Monday to Sunday, local)
MAX_RANGE_DAYS = 366
SOURCES = ("manual", "automation")
IMAGE_TIERS = ("basic", "quality", "premium")
LOG_PAGE_SIZE = 50
INSIGHTS_WORK_MEM = "32MB"
CSV_BATCH_ROWS = 1000
_MICRO = Decimal("0.000001")
_DAY_SECONDS = 86_400
_EPOCH = date(1970, 1, 1)
# A year short of what datetime holds at each end, so the arithmetic on a bound (into
# UTC and the account's zone, each under a day; `to`'s next midnight; a weekly
# timeline's step past its last day) never leaves the representable range.
FIRST_YEAR, LAST_YEAR = MINYEAR + 1, MAXYEAR - 1

U = CreditUsageLog


# --- time: the account's zone, windows, local days ------------------------------------


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    """An IANA zone name the tz database knows ("Europe/Paris"), or 422."""
    if name not in _zone_names():
        raise InvalidInput(
            f"Unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'.",
            fields={"timezone": "an IANA time zone name"},
        )
    return name


def set_timezone(session: Session, account: Account, name: str | None) -> None:
    """The zone the account's usage timeline is bucketed in; None goes back to UTC."""
    account.timezone = check_timezone(name) if name is not None else None
    session.flush()


def account_zone(account: Account) -> tzinfo:
    return ZoneInfo(account.timezone) if account.timezone else UTC


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def parse_bound(value: str, zone: tzinfo, name: str, *, end: bool = False) -> datetime:
    """A query bound as a UTC instant: a date means local midnight (for an `end`, the
    midnight after it, so the day is included); a time without offset is local."""
    try:
        given = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time, not {value!r}.",
            fields={name: "a date (YYYY-MM-DD) or an ISO 8601 time"},
        ) from None
    if not FIRST_YEAR <= given.year <= LAST_YEAR:
        raise InvalidInput(
            f"{name} must be in the years {FIRST_YEAR} to {LAST_YEAR}, not {value!r}.",
            fields={name: f"a date or time in the years {FIRST_YEAR} to {LAST_YEAR}"},
        )
    if isinstance(given, datetime):
        return (given if given.tzinfo else given.replace(tzinfo=zone)).astimezone(UTC)
    return _midnight(given + timedelta(days=1) if end else given, zone)


def _check_order(start: datetime, end: datetime) -> None:
    if start >= end:
        raise InvalidInput("'from' must be before 'to'.", fields={"from": "before 'to'"})


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC, and the local days it covers in `zone`."""

    start: datetime
    end: datetime
    zone: tzinfo

    @property
    def first_day(self) -> date:
        return self.start.astimezone(self.zone).date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def weekly(self) -> bool:
        return self.days > WEEKLY_OVER_DAYS

    def view(self) -> dict[str, Any]:
        return {
            "from": self.start.astimezone(self.zone).isoformat(),
            "to": self.end.astimezone(self.zone).isoformat(),
            "timezone": str(self.zone),
            "days": self.days,
            "granularity": "week" if self.weekly else "day",
        }


def window(
    zone: tzinfo, now: datetime, *, days: str | None, start: str | None, end: str | None
) -> Window:
    """The last `days` local days (today included), or `from`..`to`, at most a year."""
    if days is not None and (start or end):
        raise InvalidInput("Give 'days' or 'from'/'to', not both.", fields={"days": "or from/to"})
    if start is None:
        if end is not None:
            raise InvalidInput("'to' needs a 'from'.", fields={"from": "required with 'to'"})
        days = str(DEFAULT_DAYS) if days is None else days
        if days not in {str(n) for n in INSIGHT_DAYS}:
            raise InvalidInput(
                f"days must be one of {', '.join(map(str, INSIGHT_DAYS))}.",
                fields={"days": f"one of {list(INSIGHT_DAYS)}"},
            )
        today = now.astimezone(zone).date()
        return Window(
            _midnight(today - timedelta(days=int(days) - 1), zone),
            _midnight(today + timedelta(days=1), zone),
            zone,
        )
    lower = parse_bound(start, zone, "from")
    upper = (
        parse_bound(end, zone, "to", end=True)
        if end is not None
        else _midnight(now.astimezone(zone).date() + timedelta(days=1), zone)
    )
    _check_order(lower, upper)
    chosen = Window(lower, upper, zone)
    if chosen.days > MAX_RANGE_DAYS:
        raise InvalidInput(
            f"The range may span at most {MAX_RANGE_DAYS} days.",
            fields={"to": f"at most {MAX_RANGE_DAYS} days after 'from'"},
        )
    return chosen


def _offset_at(zone: tzinfo, second: int) -> int:
    offset = datetime.fromtimestamp(second, zone).utcoffset()
    return int(offset.total_seconds()) if offset else 0


def offset_pieces(zone: tzinfo, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """[(from, UTC offset in seconds)] covering [start, end).

    A zone's offset is a step function of time. Sampled every 6 hours, each step is
    found to the second by bisection (transitions are whole seconds, months apart).
    """
    first, last = math.floor(start.timestamp()), math.ceil(end.timestamp())
    pieces = [(first, _offset_at(zone, first))]
    at = first
    while at < last:
        step = min(at + 6 * 3600, last)
        if _offset_at(zone, step) != pieces[-1][1]:
            low, high = at, step
            while high - low > 1:
                middle = (low + high) // 2
                if _offset_at(zone, middle) == pieces[-1][1]:
                    low = middle
                else:
                    high = middle
            pieces.append((high, _offset_at(zone, high)))
        at = step
    return [(datetime.fromtimestamp(second, UTC), offset) for second, offset in pieces]


class epoch_seconds(FunctionElement[int]):  # noqa: N801 - SQL function naming
    """Whole seconds since 1970 of a UTC timestamp column, on either database."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # date_part is double precision (EXTRACT is numeric, slower per row); a double holds
    # a microsecond timestamp's whole seconds exactly, so FLOOR cannot cross a second.
    column = compiler.process(element.clauses, **kw)
    return f"CAST(FLOOR(DATE_PART('epoch', {column})) AS BIGINT)"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps times in milliseconds and rounds: 23:59:59.9995 would become the next
    # day. The stored text ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) cut to whole seconds floors.
    column = compiler.process(element.clauses, **kw)
    return f"CAST(STRFTIME('%s', SUBSTR({column}, 1, 19)) AS INTEGER)"


def local_day(column: Any, zone: tzinfo, start: datetime, end: datetime) -> ColumnElement[int]:
    """Days since 1970-01-01 of `column`'s local date in `zone`, for rows in [start, end):
    epoch seconds plus the zone's offset at that instant (a CASE over the offset's steps
    in the window), divided by a day. The same SQL on SQLite and PostgreSQL."""
    pieces = offset_pieces(zone, start, end)
    offset: ColumnElement[int] = literal_column(str(pieces[-1][1]), BigInteger)
    if len(pieces) > 1:
        offset = case(
            *[
                (column < until, literal_column(str(seconds), BigInteger))
                for (_, seconds), (until, _) in pairwise(pieces)
            ],
            else_=offset,
        )
    return (epoch_seconds(column) + offset) // _DAY_SECONDS


def _day_of(number: int) -> date:
    return _EPOCH + timedelta(days=int(number))


# 1970-01-01 was a Thursday: day number + 3 is a multiple of 7 on Mondays.
_MONDAY_SHIFT = 3


def _bucket(day: ColumnElement[int], weekly: bool) -> ColumnElement[int]:
    """The timeline bucket of a day number: the day, or its Monday-to-Sunday week."""
    return (day + _MONDAY_SHIFT) // 7 if weekly else day


def _bucket_start(number: int, weekly: bool) -> date:
    return _day_of(int(number) * 7 - _MONDAY_SHIFT) if weekly else _day_of(number)


# --- money and tallies ----------------------------------------------------------------

_MICRO_USD = cast(func.round(U.cost_usd * 1_000_000), BigInteger)


def usd(micro: int) -> str:
    """Micro-dollars as the decimal string the API serves ("0.012345")."""
    return str((Decimal(micro) * _MICRO).quantize(_MICRO))


def usd_of(value: Decimal | None) -> str:
    return str(Decimal(value or 0).quantize(_MICRO))


@dataclass
class Tally:
    credits: int = 0
    jobs: int = 0
    items: int = 0
    images: int = 0
    micro_usd: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def add(self, other: Tally) -> None:
        self.credits += other.credits
        self.jobs += other.jobs
        self.items += other.items
        self.images += other.images
        self.micro_usd += other.micro_usd
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out

    def view(self, *fields: str) -> dict[str, Any]:
        """The figures named in `fields` (all of them by default)."""
        figures = {
            "credits": self.credits,
            "jobs": self.jobs,
            "items": self.items,
            "images": self.images,
            "cost_usd": usd(self.micro_usd),
            "tokens_input": self.tokens_in,
            "tokens_output": self.tokens_out,
        }
        return {name: figures[name] for name in fields} if fields else figures


def _tally(row: Row[Any]) -> Tally:
    return Tally(
        credits=int(row.credits or 0),
        jobs=int(row.jobs or 0),
        items=int(row.items or 0),
        images=int(row.images or 0),
        micro_usd=int(row.micro_usd or 0),
        tokens_in=int(row.tokens_in or 0),
        tokens_out=int(row.tokens_out or 0),
    )


def _sums(source: Any) -> list[ColumnElement[Any]]:
    """The tally columns over a (sub)query with the usage log's columns."""
    return [
        func.count().label("jobs"),
        func.sum(source.credits).label("credits"),
        func.sum(source.items_created).label("items"),
        func.sum(source.images).label("images"),
        func.sum(source.micro_usd).label("micro_usd"),
        func.sum(source.tokens_in).label("tokens_in"),
        func.sum(source.tokens_out).label("tokens_out"),
    ]


# --- insights ---------------------------------------------------------------------------


@dataclass
class _Rollup:
    totals: Tally = field(default_factory=Tally)
    operation: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    site: dict[str | None, Tally] = field(default_factory=lambda: defaultdict(Tally))
    model: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    tier: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    source: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    day: dict[date, Tally] = field(default_factory=lambda: defaultdict(Tally))


def insight_query(account_id: str, span: Window) -> Select[Any]:
    """One scan of the account's usage rows in the window, grouped finely enough that
    every breakdown is a sum of groups (by week for long windows: 7 times fewer groups)."""
    day = local_day(U.created_at, span.zone, span.start, span.end)
    rows = (
        select(
            _bucket(day, span.weekly).label("day"),
            U.operation,
            U.site_id,
            U.model,
            U.automation_id.is_not(None).label("automated"),
            U.credits,
            U.items_created,
            U.images,
            _MICRO_USD.label("micro_usd"),
            U.tokens_in,
            U.tokens_out,
        )
        .where(U.account_id == account_id, U.created_at >= span.start, U.created_at < span.end)
        .subquery()
    )
    keys = (rows.c.day, rows.c.operation, rows.c.site_id, rows.c.model, rows.c.automated)
    return select(*keys, *_sums(rows.c)).group_by(*keys)


def allow_hash_aggregate(session: Session) -> None:
    """PostgreSQL cannot estimate how many local days the rows fall on, assumes a group
    per row and sorts them all (to disk past the default 4 MB of work_mem); the few
    thousand real groups fit a hash table. Only this transaction gets the allowance."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{INSIGHTS_WORK_MEM}'"))


def _models(session: Session) -> dict[str, tuple[str, str]]:
    """name -> (model_type, quality_tier): the tier is the model's, as priced now."""
    query = select(AIModelConfig.name, AIModelConfig.model_type, AIModelConfig.quality_tier)
    return {name: (kind, tier) for name, kind, tier in session.execute(query)}


def _roll_up(rows: Iterable[Row[Any]], models: dict[str, tuple[str, str]], weekly: bool) -> _Rollup:
    rollup = _Rollup()
    for row in rows:
        tally = _tally(row)
        day = _bucket_start(row.day, weekly)
        rollup.totals.add(tally)
        rollup.operation[row.operation].add(tally)
        rollup.site[row.site_id].add(tally)
        rollup.model[row.model].add(tally)
        rollup.source[SOURCES[1] if row.automated else SOURCES[0]].add(tally)
        rollup.day[day].add(tally)
        kind, tier = models.get(row.model, ("image" if row.images else "text", "unknown"))
        if kind == "image":
            rollup.tier[tier].add(tally)
    return rollup


def _timeline(span: Window, days: dict[date, Tally]) -> list[dict[str, Any]]:
    """Every day (or week) of the window, zero-filled; a week is labelled by its first
    day inside the window."""
    step = 7 if span.weekly else 1
    first = span.first_day
    bucket = first - timedelta(days=first.weekday()) if span.weekly else first
    points = []
    while bucket <= span.last_day:
        tally = days.get(bucket, Tally())
        points.append(
            {
                "date": max(bucket, first).isoformat(),
                "credits": tally.credits,
                "jobs": tally.jobs,
                "cost_usd": usd(tally.micro_usd),
            }
        )
        bucket += timedelta(days=step)
    return points


_COUNTS = ("credits", "jobs", "cost_usd")
_USE = (*_COUNTS, "images", "tokens_input", "tokens_output")


def _ranked(tallies: dict[Any, Tally]) -> list[tuple[Any, Tally]]:
    return sorted(tallies.items(), key=lambda kv: (-kv[1].credits, str(kv[0])))


def insights(session: Session, account: Account, span: Window) -> dict[str, Any]:
    """The Credit Insights page: per operation (with items created), site, model, image
    tier and source, a zero-filled timeline, and the totals they each add up to."""
    models = _models(session)
    allow_hash_aggregate(session)
    rows = session.execute(insight_query(account.id, span))
    rollup = _roll_up(rows, models, span.weekly)
    sites = select(Site.id, Site.name).where(Site.account_id == account.id)
    names: dict[str | None, str] = {site_id: name for site_id, name in session.execute(sites)}
    operations = list(OPERATIONS) + sorted(set(rollup.operation) - set(OPERATIONS))
    tiers = list(IMAGE_TIERS) + sorted(set(rollup.tier) - set(IMAGE_TIERS))
    return {
        "range": span.view(),
        "totals": rollup.totals.view(),
        "by_operation": [
            {
                "operation": name,
                "label": OPERATIONS[name].artifact_label if name in OPERATIONS else "items",
                **rollup.operation.get(name, Tally()).view(*_COUNTS, "items"),
            }
            for name in operations
        ],
        "by_site": [
            {"site_id": site_id, "site_name": names.get(site_id), **tally.view(*_COUNTS, "items")}
            for site_id, tally in _ranked(rollup.site)
        ],
        "by_model": [
            {"model": name, "tier": models.get(name, ("", "unknown"))[1], **tally.view(*_USE)}
            for name, tally in _ranked(rollup.model)
        ],
        "by_image_tier": [
            {"tier": tier, **rollup.tier.get(tier, Tally()).view(*_COUNTS, "images")}
            for tier in tiers
        ],
        "by_source": [
            {"source": source, **rollup.source.get(source, Tally()).view(*_COUNTS)}
            for source in SOURCES
        ],
        "timeline": _timeline(span, rollup.day),
    }


# --- summary ----------------------------------------------------------------------------


def current_period(account: Account, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the account's usage period holding `now`, even before the hourly
    rollover has stored it (the usage summary and the budgets both count this one);
    without a period, the calendar month (local) around now."""
    if account.period_start is not None and account.period_end is not None:
        return period_containing(as_utc(account.period_start), as_utc(account.period_end), now)
    zone = account_zone(account)
    first = now.astimezone(zone).date().replace(day=1)
    start = _midnight(first, zone)
    return start, _midnight(add_months(datetime.combine(first, time()), 1).date(), zone)


def summary(session: Session, account: Account, now: datetime) -> dict[str, Any]:
    """The Usage page's header: the four limits, the balance, and this period's spend."""
    start, end = current_period(account, now)
    used = session.scalar(
        select(func.coalesce(func.sum(U.credits), 0)).where(
            U.account_id == account.id, U.created_at >= start, U.created_at < end
        )
    )
    zone = account_zone(account)
    plan = account.plan
    return {
        "period": {
            "start": start.astimezone(zone).isoformat(),
            "end": end.astimezone(zone).isoformat(),
            "days_remaining": max(0, math.ceil((end - now).total_seconds() / _DAY_SECONDS)),
        },
        "credits": {
            **credits_view(account),
            "plan_allocation": plan.included_credits if plan else 0,
            "used_this_period": int(used or 0),
        },
        "limits": limits_report(session, account, named=True),
        "plan": {"slug": plan.slug, "name": plan.name} if plan else None,
        "timezone": str(zone),
    }


# --- logs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    operation: str | None = None
    site_id: str | None = None
    model: str | None = None
    job_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def log_filter(
    session: Session,
    account: Account,
    *,
    operation: str | None = None,
    site_id: str | None = None,
    model: str | None = None,
    job_id: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> LogFilter:
    """Checked filters: a known operation and model, the account's own site and job
    (else 404), bounds in order (dates are local days of the account's zone)."""
    if operation is not None and operation not in OPERATIONS:
        raise InvalidInput(
            f"Unknown operation {operation!r}.", fields={"operation": f"one of {list(OPERATIONS)}"}
        )
    if model is not None and session.get(AIModelConfig, model) is None:
        raise InvalidInput(f"Unknown model {model!r}.", fields={"model": "a model name"})
    if site_id is not None:  # a deleted site's usage is history, kept to be read
        get_site(session, account.id, site_id, include_deleted=True)
    if job_id is not None:
        get_job(session, account.id, job_id)
    zone = account_zone(account)
    lower = parse_bound(start, zone, "from") if start else None
    upper = parse_bound(end, zone, "to", end=True) if end else None
    if lower is not None and upper is not None:
        _check_order(lower, upper)
    return LogFilter(operation, site_id, model, job_id, lower, upper)


_LOG_COLUMNS = (
    U.id,
    U.created_at,
    U.operation,
    U.model,
    U.site_id,
    U.job_id,
    U.credits,
    U.tokens_in,
    U.tokens_out,
    U.images,
    U.items_created,
    U.cost_usd,
    U.automation_id,
    Job.input,
)


def log_query(account_id: str, where: LogFilter) -> Select[Any]:
    query = select(*_LOG_COLUMNS).join(Job, Job.id == U.job_id).where(U.account_id == account_id)
    for column, value in (
        (U.operation, where.operation),
        (U.site_id, where.site_id),
        (U.model, where.model),
        (U.job_id, where.job_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.start is not None:
        query = query.where(U.created_at >= where.start)
    if where.end is not None:
        query = query.where(U.created_at < where.end)
    return query.order_by(U.created_at.desc(), U.id.desc())


def list_logs(
    session: Session, account_id: str, where: LogFilter, *, cursor: str | None, limit: int
) -> Page[Row[Any]]:
    """Newest first, keyset-paged on (created_at, id)."""
    limit = page_size(limit)
    query = log_query(account_id, where)
    if cursor:
        when, row_id = decode_time_int_cursor(cursor)
        query = query.where(U.created_at <= when, or_(U.created_at < when, U.id < row_id))
    rows = session.execute(query.limit(limit + 1)).all()
    return page_of(rows, limit, lambda row: encode_cursor(_iso(row.created_at), str(row.id)))


def stream_logs(session: Session, account_id: str, where: LogFilter) -> Iterator[Row[Any]]:
    """Every matching row, fetched in batches (a server-side cursor on PostgreSQL), so an
    export of any size holds one batch in memory."""
    query = log_query(account_id, where).execution_options(yield_per=CSV_BATCH_ROWS)
    yield from session.execute(query)


def _iso(value: datetime) -> str:
    return as_utc(value).isoformat()


LOG_FIELDS = (
    "id", "created_at", "operation", "detail", "model", "site_id", "job_id", "source",
    "credits", "tokens_input", "tokens_output", "images", "items_created", "cost_usd",
)  # fmt: skip
CSV_COLUMNS = LOG_FIELDS
_DETAIL = LOG_FIELDS.index("detail")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _log_values(row: Row[Any]) -> list[Any]:
    """One usage row's public fields, in LOG_FIELDS order (JSON and CSV alike)."""
    operation = OPERATIONS.get(row.operation)
    return [
        row.id,
        _iso(row.created_at),
        row.operation,
        operation.detail(row.input or {}) if operation else "",
        row.model,
        row.site_id,
        row.job_id,
        SOURCES[1] if row.automation_id else SOURCES[0],
        row.credits,
        row.tokens_in,
        row.tokens_out,
        row.images,
        row.items_created,
        usd_of(row.cost_usd),
    ]


def log_view(row: Row[Any]) -> dict[str, Any]:
    return dict(zip(LOG_FIELDS, _log_values(row), strict=True))


def csv_chunks(rows: Iterable[Row[Any]]) -> Iterator[str]:
    """The header, then the rows as CSV text, CSV_BATCH_ROWS lines per chunk.

    The detail is the customer's own text (a title, a prompt): one starting like a
    formula gets a leading quote, so a spreadsheet shows it instead of running it.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for count, row in enumerate(rows, start=1):
        values = _log_values(row)
        if values[_DETAIL].startswith(_FORMULA_START):
            values[_DETAIL] = "'" + values[_DETAIL]
        writer.writerow(values)
        if count % CSV_BATCH_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# --- platform totals (operators) ---------------------------------------------------------


def platform_daily(session: Session, span: Window) -> dict[str, Any]:
    """Per UTC day, across every account: credits and USD spent (usage logs) and jobs
    created by their status now."""
    usage_day = local_day(U.created_at, span.zone, span.start, span.end)
    usage = (
        select(usage_day.label("day"), U.credits, U.items_created, U.images, U.tokens_in,
               U.tokens_out, _MICRO_USD.label("micro_usd"))
        .where(U.created_at >= span.start, U.created_at < span.end)
        .subquery()
    )  # fmt: skip
    spent = {
        _day_of(row.day): _tally(row)
        for row in session.execute(select(usage.c.day, *_sums(usage.c)).group_by(usage.c.day))
    }
    job_day = local_day(Job.created_at, span.zone, span.start, span.end)
    jobs = (
        select(job_day.label("day"), Job.status)
        .where(Job.created_at >= span.start, Job.created_at < span.end)
        .subquery()
    )
    statuses: dict[date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(JOB_STATUSES, 0))
    for day, status, count in session.execute(
        select(jobs.c.day, jobs.c.status, func.count()).group_by(jobs.c.day, jobs.c.status)
    ):
        statuses[_day_of(day)][status] = int(count)
    data, totals = [], Tally()
    day = span.first_day
    while day <= span.last_day:
        tally = spent.get(day, Tally())
        totals.add(tally)
        data.append(
            {
                "date": day.isoformat(),
                "credits": tally.credits,
                "cost_usd": usd(tally.micro_usd),
                "usage_rows": tally.jobs,
                "jobs": statuses.get(day, dict.fromkeys(JOB_STATUSES, 0)),
            }
        )
        day += timedelta(days=1)
    return {"range": {**span.view(), "granularity": "day"}, "totals": totals.view(), "data": data}
