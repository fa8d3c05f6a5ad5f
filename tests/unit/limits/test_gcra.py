"""GCRA on a fake clock, through the memory store (the embedded default)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.limits.gcra import gcra_step
from quotagate.store.base import RateCheck, WindowCheck
from quotagate.store.memory import MemoryStore


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def per_minute(key: str, amount: int, burst: int | None = None, cost: int = 1) -> RateCheck:
    return RateCheck(key, 60 / amount, burst or amount, cost)


def test_ten_per_minute_admits_ten_then_refuses_with_retry_after() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    results = [store.acquire_now([per_minute("k", 10)]) for _ in range(15)]
    assert [r.allowed for r in results] == [True] * 10 + [False] * 5
    assert [r.outcomes[0].remaining for r in results[:10]] == list(range(9, -1, -1))
    assert results[10].outcomes[0].retry_after == pytest.approx(6.0)
    assert results[10].outcomes[0].reset_after == pytest.approx(60.0)


def test_refills_one_unit_per_interval() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    for _ in range(10):
        assert store.acquire_now([per_minute("k", 10)]).allowed
    clock.now += 5.999
    assert not store.acquire_now([per_minute("k", 10)]).allowed
    clock.now += 0.001
    assert store.acquire_now([per_minute("k", 10)]).allowed
    assert not store.acquire_now([per_minute("k", 10)]).allowed


def test_burst_smaller_than_amount_spreads_requests() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    check = per_minute("k", 6000, burst=100)
    admitted = sum(store.acquire_now([check]).allowed for _ in range(150))
    assert admitted == 100
    clock.now += 0.5  # 6000/min = 100/s → 50 more units
    assert sum(store.acquire_now([check]).allowed for _ in range(80)) == 50


def test_batch_is_all_or_nothing() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    tenant = per_minute("tenant", 3)
    for i in range(3):
        assert store.acquire_now([per_minute(f"key{i}", 10), tenant]).allowed
    before = store.peek("key9")
    denied = store.acquire_now([per_minute("key9", 10), tenant])
    assert not denied.allowed and denied.denied == 1
    assert store.peek("key9") == before is None  # the key's counter was not consumed


def test_denied_requests_do_not_count() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    for _ in range(10):
        store.acquire_now([per_minute("k", 10)])
    for _ in range(100):
        assert not store.acquire_now([per_minute("k", 10)]).allowed
    clock.now += 6
    assert store.acquire_now([per_minute("k", 10)]).allowed


def test_cost_larger_than_capacity_is_never_admitted() -> None:
    result = gcra_step(0.0, 0.0, 1.0, capacity=5, cost=6)
    assert not result.allowed


@settings(max_examples=200, deadline=None)
@given(
    amount=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_refill_in_any_window(amount: int, gaps: list[float]) -> None:
    """In any interval of length d, GCRA admits at most capacity + d / interval."""
    clock = FakeClock(0.0)
    store = MemoryStore(clock)
    window = 10.0
    check = RateCheck("k", window / amount, amount, 1)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if store.acquire_now([check]).allowed:
            admitted.append(clock.now)
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t - start < window]
        assert len(inside) <= amount + (window / check.interval)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 30),
    gaps=st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=200),
)
def test_sliding_window_never_more_than_limit_in_any_window(limit: int, gaps: list[float]) -> None:
    clock = FakeClock(0.0)
    store = MemoryStore(clock)
    window = 10.0
    admitted: list[float] = []
    for i, gap in enumerate(gaps):
        clock.now += gap
        if store.acquire_now([WindowCheck("k", limit, window, str(i))]).allowed:
            admitted.append(clock.now)
    for i, start in enumerate(admitted):
        assert len([t for t in admitted[i:] if t - start < window]) <= limit
