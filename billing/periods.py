"""Calendar-month periods anchored to a start date (Jan 31 -> Feb 28/29 -> Mar 31)."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole calendar months, the day clamped to the month's length."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def next_period_end(start: datetime, end: datetime) -> datetime:
    """The end of the month that follows the period [start, end).

    Boundaries stay on the day D the first period started, clamped to short months
    (Jan 31 -> Feb 28 -> Mar 31 -> Apr 30), never drifting to the 28th. D needs no
    column: each boundary is min(D, month length), and of two consecutive months one
    has 31 days, so max(start.day, end.day) == D.
    """
    following = add_months(end.replace(day=1), 1)
    last_day = calendar.monthrange(following.year, following.month)[1]
    return following.replace(day=min(max(start.day, end.day), last_day))


def period_containing(start: datetime, end: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The period [start, end) if it holds `now`, else the later one that does.

    It steps as `lifecycle.roll_over_periods` does, so a "this period" figure is right in
    the gap between a period's end and the hourly rollover that stores the next one, and
    matches what that rollover will store. The stored period is the rollover's to move.
    """
    while end <= now:
        start, end = end, next_period_end(start, end)
    return start, end
