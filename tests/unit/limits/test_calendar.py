"""Calendar periods in a time zone, with DST and billing anchor days."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from quotagate.config.schema import LimitRule
from quotagate.limits.calendar import candidate_periods, period_bounds
from quotagate.limits.policy import CalendarPeriods, ScopeValues, compile_limit
from quotagate.store.base import CounterCheck

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_day_resets_at_local_midnight_not_utc() -> None:
    start, end = period_bounds(utc(2026, 11, 23, 23, 30), "day", BERLIN)
    assert start == datetime(2026, 11, 24, tzinfo=BERLIN)  # 00:30 in Berlin already
    assert (end - start).total_seconds() == 86400


def test_dst_days_are_23_and_25_hours_long() -> None:
    spring = period_bounds(utc(2026, 3, 29, 12), "day", BERLIN)
    autumn = period_bounds(utc(2026, 10, 25, 12), "day", BERLIN)
    assert spring[1].timestamp() - spring[0].timestamp() == 23 * 3600
    assert autumn[1].timestamp() - autumn[0].timestamp() == 25 * 3600


def test_week_starts_on_monday() -> None:
    start, end = period_bounds(utc(2026, 11, 26, 12), "week", NEW_YORK)
    assert start == datetime(2026, 11, 23, tzinfo=NEW_YORK) and start.weekday() == 0
    assert end == datetime(2026, 11, 30, tzinfo=NEW_YORK)


@pytest.mark.parametrize(
    ("at", "anchor", "start", "end"),
    [
        (utc(2026, 11, 20), 15, datetime(2026, 11, 15), datetime(2026, 12, 15)),
        (utc(2026, 11, 10), 15, datetime(2026, 10, 15), datetime(2026, 11, 15)),
        (utc(2026, 2, 20), 31, datetime(2026, 1, 31), datetime(2026, 2, 28)),
        (utc(2026, 3, 5), 31, datetime(2026, 2, 28), datetime(2026, 3, 31)),
        (utc(2026, 12, 20), 15, datetime(2026, 12, 15), datetime(2027, 1, 15)),
    ],
)
def test_month_follows_the_billing_anchor(
    at: datetime, anchor: int, start: datetime, end: datetime
) -> None:
    got = period_bounds(at, "month", NEW_YORK, anchor)
    assert got == (start.replace(tzinfo=NEW_YORK), end.replace(tzinfo=NEW_YORK))


def test_candidate_periods_are_contiguous() -> None:
    start, end, next_end = candidate_periods(utc(2026, 1, 31, 12).timestamp(), "month", BERLIN)
    assert start < end < next_end
    assert period_bounds(datetime.fromtimestamp(end, UTC), "month", BERLIN)[0].timestamp() == end


def test_calendar_limit_compiles_to_a_counter_with_cached_bounds() -> None:
    rule = LimitRule.model_validate(
        {"scope": "tenant", "tokens": 1000, "per": "day", "timezone": "Europe/Berlin"}
    )
    limit = compile_limit(rule, "free.")
    assert limit.name == "free.tenant-tokens-day" and limit.algorithm == "calendar"
    check = limit.check(ScopeValues("t", "k", "u", "ip", "m", "r"), "id", cost=30)
    assert isinstance(check, CounterCheck) and check.cost == 30 and check.limit == 1000
    assert check.start <= datetime.now(UTC).timestamp() < check.end


def test_calendar_periods_recompute_only_when_the_period_ends() -> None:
    now = [utc(2026, 11, 23, 10).timestamp()]
    periods = CalendarPeriods("day", "UTC", 1, clock=lambda: now[0])
    first = periods.current()  # (prev_start, start, end, next_end)
    assert first[0] == first[1] - 86400 and first[1] <= now[0] < first[2]
    now[0] += 3600
    assert periods.current() is first
    now[0] = first[2]
    assert periods.current()[1] == first[2]
    assert periods.current()[0] == first[1]
