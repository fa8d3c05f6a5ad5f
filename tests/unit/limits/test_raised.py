"""A tenant's temporary rate raise: ``factor`` times each limit, on counters of its own,
whatever the limit's algorithm (a calendar limit stays a calendar limit)."""

from __future__ import annotations

import pytest

from quotagate.config.schema import LimitRule
from quotagate.limits.policy import ScopeValues, compile_limits
from quotagate.store.base import CounterCheck, LeaseCheck, RateCheck, WindowCheck

VALUES = ScopeValues("t1", "k1", "u1", "10.0.0.1", "m", "chat.completions", [])


def one(**rule: object) -> object:
    (limit,) = compile_limits([LimitRule.model_validate({"scope": "key", **rule})])
    return limit


def test_a_raised_calendar_limit_counts_per_period_on_its_own_counter() -> None:
    limit = one(requests=100, per="day")
    plain, raised = limit.check(VALUES, "id"), limit.check(VALUES, "id", factor=2.0)  # type: ignore[attr-defined]
    assert isinstance(plain, CounterCheck) and isinstance(raised, CounterCheck)
    assert (raised.limit, plain.limit) == (200, 100)
    assert (raised.start, raised.end) == (plain.start, plain.end)  # the same day
    assert raised.key == plain.key + ":x2000"


@pytest.mark.parametrize(
    ("rule", "kind"),
    [
        ({"requests": 60, "per": "1m"}, RateCheck),
        ({"requests": 60, "per": "1m", "algorithm": "sliding_window"}, WindowCheck),
        ({"requests": 60, "per": "1m", "algorithm": "fixed_window"}, CounterCheck),
        ({"concurrent": 4}, LeaseCheck),
    ],
)
def test_every_algorithm_keeps_its_kind_when_raised(rule: dict[str, object], kind: type) -> None:
    limit = one(**rule)
    plain, raised = limit.check(VALUES, "id"), limit.check(VALUES, "id", factor=2.5)  # type: ignore[attr-defined]
    assert type(plain) is kind and type(raised) is kind
    assert raised.key.endswith(":x2500") and not plain.key.endswith(":x2500")
    if isinstance(raised, RateCheck):
        assert isinstance(plain, RateCheck)
        assert raised.capacity == round(plain.capacity * 2.5)
        assert raised.interval == pytest.approx(plain.interval / 2.5)
    else:
        assert raised.limit == round(plain.limit * 2.5)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "rule",
    [
        {"requests": 60, "per": "1m"},
        {"requests": 60, "per": "1m", "algorithm": "sliding_window"},
        {"requests": 60, "per": "1m", "algorithm": "fixed_window"},
        {"requests": 100, "per": "day"},
    ],
)
def test_pressure_scales_the_plans_own_counter(rule: dict[str, object]) -> None:
    """Model pressure tightens the counter a caller has been using, not a fresh one."""
    limit = one(**rule)
    plain, scaled = limit.check(VALUES, "id"), limit.check(VALUES, "id", scale=0.5)  # type: ignore[attr-defined]
    assert scaled.key == plain.key
    if isinstance(scaled, RateCheck):
        assert isinstance(plain, RateCheck)
        assert scaled.capacity == round(plain.capacity * 0.5)
        assert scaled.interval == pytest.approx(plain.interval / 0.5)
    else:
        assert scaled.limit == round(plain.limit * 0.5)  # type: ignore[attr-defined]


def test_a_raise_under_pressure_keeps_the_raises_counter_at_both_factors() -> None:
    limit = one(requests=60, per="1m")
    plain = limit.check(VALUES, "id")  # type: ignore[attr-defined]
    both = limit.check(VALUES, "id", factor=2.0, scale=0.5)  # type: ignore[attr-defined]
    assert isinstance(plain, RateCheck) and isinstance(both, RateCheck)
    assert both.key == plain.key + ":x2000"
    assert (both.capacity, both.interval) == (plain.capacity, pytest.approx(plain.interval))
