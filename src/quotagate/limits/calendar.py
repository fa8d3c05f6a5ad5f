"""Calendar periods: the day, week or month a request falls in, in a time zone, with a
billing anchor day for months.

Pure functions over aware datetimes; the store is handed the UTC bounds of the
current period and of the next one (as the gateway's clock sees them) and picks the
one that contains its own clock's now, so a gateway a little off across midnight
still counts into the right period.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month"]


def _month_start(year: int, month: int, anchor: int, tz: ZoneInfo) -> datetime:
    day = min(anchor, calendar.monthrange(year, month)[1])  # the 31st in February → 28/29
    return datetime(year, month, day, tzinfo=tz)


def _shift_month(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


def period_bounds(
    at: datetime, period: Period, tz: ZoneInfo, anchor_day: int = 1
) -> tuple[datetime, datetime]:
    """``[start, end)`` of the period containing ``at``, as aware datetimes in ``tz``."""
    local = at.astimezone(tz)
    if period == "day":
        start = datetime(local.year, local.month, local.day, tzinfo=tz)
        nxt = start.date() + timedelta(days=1)
        return start, datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    if period == "week":  # ISO weeks: Monday 00:00
        monday = local.date() - timedelta(days=local.weekday())
        start = datetime(monday.year, monday.month, monday.day, tzinfo=tz)
        nxt = monday + timedelta(days=7)
        return start, datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    start = _month_start(local.year, local.month, anchor_day, tz)
    if local < start:
        start = _month_start(*_shift_month(local.year, local.month, -1), anchor_day, tz)
    return start, _month_start(*_shift_month(start.year, start.month, 1), anchor_day, tz)


def candidate_periods(
    now: float, period: Period, tz: ZoneInfo, anchor_day: int = 1
) -> tuple[float, float, float]:
    """Epoch seconds ``(start, end, next_end)``: this period and the one after it."""
    start, end = period_bounds(datetime.fromtimestamp(now, UTC), period, tz, anchor_day)
    _, next_end = period_bounds(end, period, tz, anchor_day)
    return start.timestamp(), end.timestamp(), next_end.timestamp()


def previous_start(start: float, period: Period, tz: ZoneInfo, anchor_day: int = 1) -> float:
    """Epoch seconds at which the period before the one starting at ``start`` began."""
    at = datetime.fromtimestamp(start - 1, UTC)
    return period_bounds(at, period, tz, anchor_day)[0].timestamp()
