"""The store contract, one test body for memory, standalone Redis and a 3-master Cluster."""

from __future__ import annotations

import asyncio
import random
import time

from quotagate.store.base import (
    CounterCheck,
    LeaseCheck,
    LimitStore,
    RateCheck,
    WindowCheck,
)


def rate(key: str, amount: int, per: float = 60.0, cost: int = 1) -> RateCheck:
    return RateCheck(key, per / amount, amount, cost)


async def test_admits_exactly_the_bucket_then_refuses_with_retry_after(store: LimitStore) -> None:
    results = [await store.acquire([rate("rl:{t:a}:k", 10)]) for _ in range(15)]
    assert [r.allowed for r in results] == [True] * 10 + [False] * 5
    assert [r.outcomes[0].remaining for r in results[:10]] == list(range(9, -1, -1))
    refused = results[10].outcomes[0]
    assert 5.0 < refused.retry_after <= 6.0
    assert 59.0 < refused.reset_after <= 60.0
    assert results[10].denied == 0


async def test_concurrent_acquisitions_are_exact(store: LimitStore) -> None:
    check = rate("rl:{t:b}:k", 50)
    results = await asyncio.gather(*(store.acquire([check]) for _ in range(300)))
    assert sum(r.allowed for r in results) == 50


async def test_denial_consumes_nothing_across_tenant_and_global_slots(store: LimitStore) -> None:
    """A request under its key limit but over its tenant limit consumes neither; a
    cross-slot global counter admitted first is compensated."""
    tenant = rate("rl:{t:c}:tenant", 3)
    glob = rate("rl:{}:global", 1000)
    for i in range(3):
        assert (await store.acquire([glob, rate(f"rl:{{t:c}}:key{i}", 10), tenant])).allowed
    denied = await store.acquire([glob, rate("rl:{t:c}:key9", 10), tenant])
    assert not denied.allowed and denied.denied == 2
    # key9 was not consumed: its full bucket of 10 is still there
    assert (await store.acquire([rate("rl:{t:c}:key9", 10)])).outcomes[0].remaining == 9
    # the global counter holds exactly the 3 admitted requests
    assert (await store.acquire([glob])).outcomes[0].remaining == 1000 - 4


async def test_adjust_refunds_and_charges(store: LimitStore) -> None:
    check = rate("rl:{t:d}:tokens", 100, cost=40)
    assert (await store.acquire([check])).outcomes[0].remaining == 60
    await store.adjust([check], [-30])  # used 10 of the 40 reserved
    probe = RateCheck(check.key, check.interval, check.capacity, 1)
    assert (await store.acquire([probe])).outcomes[0].remaining == 89
    await store.adjust([check], [50])  # charged more than reserved
    assert (await store.acquire([probe])).outcomes[0].remaining == 38


async def test_refund_cannot_exceed_a_full_bucket(store: LimitStore) -> None:
    check = rate("rl:{t:e}:k", 10)
    await store.acquire([check])
    await store.adjust([check], [-100])
    assert (await store.acquire([check])).outcomes[0].remaining == 9


async def test_leases_cap_in_flight_and_free_on_release(store: LimitStore) -> None:
    def lease(i: int) -> LeaseCheck:
        return LeaseCheck("cc:{t:f}:tenant", 2, f"req{i}", 60.0)

    assert (await store.acquire([lease(1)])).allowed
    assert (await store.acquire([lease(2)])).allowed
    assert not (await store.acquire([lease(3)])).allowed
    await store.release([lease(1)])
    assert (await store.acquire([lease(3)])).allowed


async def test_leases_of_a_dead_holder_expire_after_their_ttl(store: LimitStore) -> None:
    ttl = 0.3
    started = time.monotonic()
    for i in range(2):
        assert (await store.acquire([LeaseCheck("cc:{t:g}:t", 2, f"dead{i}", ttl)])).allowed
    probe = LeaseCheck("cc:{t:g}:t", 2, "alive", ttl)
    while not (await store.acquire([probe])).allowed:
        assert time.monotonic() - started < 5, "leases never expired"
        await asyncio.sleep(0.02)  # poll interval
    assert time.monotonic() - started >= ttl * 0.9


async def test_refill_admits_again_after_the_interval(store: LimitStore) -> None:
    check = RateCheck("rl:{t:h}:fast", 0.2, 2, 1)  # 2 per 400 ms
    assert (await store.acquire([check])).allowed
    assert (await store.acquire([check])).allowed
    refused = await store.acquire([check])
    assert not refused.allowed
    await asyncio.sleep(refused.outcomes[0].retry_after + 0.01)  # the time the store named
    assert (await store.acquire([check])).allowed


async def test_sliding_window_admits_exactly_the_limit_then_frees_the_oldest(
    store: LimitStore,
) -> None:
    def entry(i: int) -> WindowCheck:
        return WindowCheck("rl:{t:w}:k", 5, 0.5, f"e{i}")

    started = time.monotonic()
    results = [await store.acquire([entry(i)]) for i in range(8)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 3
    assert [r.outcomes[0].remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    retry = results[5].outcomes[0].retry_after
    assert 0 < retry <= 0.5
    while not (await store.acquire([entry(100)])).allowed:
        assert time.monotonic() - started < 5
        await asyncio.sleep(0.02)  # poll interval
    assert time.monotonic() - started >= 0.45


async def test_sliding_window_is_exact_under_concurrency(store: LimitStore) -> None:
    results = await asyncio.gather(
        *(store.acquire([WindowCheck("rl:{t:x}:k", 40, 60.0, f"c{i}")]) for i in range(200))
    )
    assert sum(r.allowed for r in results) == 40


async def test_sampled_windows_on_the_real_clock(store: LimitStore) -> None:
    """Random arrivals for ~2 s: no window of length w holds more than the limit
    (sliding window) or more than burst + w / interval (GCRA). Times are taken when the
    answer arrives, and the window is shortened by a margin for that latency."""
    rng = random.Random(7)
    window, limit = 0.5, 4
    gcra = RateCheck("rl:{t:s}:gcra", window / limit, limit, 1)
    admitted: dict[str, list[float]] = {"w": [], "g": []}
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 2.0:
        i += 1
        if (await store.acquire([WindowCheck("rl:{t:s}:win", limit, window, f"s{i}")])).allowed:
            admitted["w"].append(time.monotonic())
        if (await store.acquire([gcra])).allowed:
            admitted["g"].append(time.monotonic())
        await asyncio.sleep(rng.uniform(0, 0.04))  # random arrival gaps
    margin = 0.03
    for kind, bound in (("w", limit), ("g", limit + (window - margin) / gcra.interval)):
        times = admitted[kind]
        assert len(times) > limit * 2, kind
        for j, start in enumerate(times):
            inside = [t for t in times[j:] if t - start < window - margin]
            assert len(inside) <= bound, (kind, len(inside))


async def test_fixed_window_counts_up_to_the_limit_and_resets_at_the_boundary(
    store: LimitStore,
) -> None:
    check = CounterCheck("rl:{t:f}:fixed", 3, 1, window=0.4)
    while True:  # start just after a boundary so the burst fits in one window
        first = await store.acquire([check])
        if first.outcomes[0].reset_after > 0.25:
            break
        await asyncio.sleep(first.outcomes[0].reset_after)  # the time the store named
    results = [first] + [await store.acquire([check]) for _ in range(4)]
    allowed = [r.allowed for r in results]
    assert allowed.count(True) in (3, 4) and allowed[:3] == [True] * 3 and not allowed[3]
    await asyncio.sleep(results[3].outcomes[0].retry_after + 0.01)
    assert (await store.acquire([check])).allowed


async def test_calendar_counter_uses_the_period_containing_the_store_clock(
    store: LimitStore,
) -> None:
    now = time.time()
    # The gateway thinks the period ended a second ago: the store's now picks the next.
    stale = CounterCheck("rl:{t:cal}:q", 5, 2, 0.0, now - 86400, now - 1, now + 86399)
    current = CounterCheck("rl:{t:cal}:q", 5, 2, 0.0, now - 1, now + 86399, now + 2 * 86400)
    assert (await store.acquire([stale])).outcomes[0].remaining == 3
    second = await store.acquire([current])  # the same period, seen right
    assert second.allowed and second.outcomes[0].remaining == 1
    refused = await store.acquire([current])
    assert not refused.allowed and refused.outcomes[0].remaining == 1
    assert 86000 < refused.outcomes[0].retry_after <= 86400
    await store.adjust([current], [-3])  # settle: used 1 of the 4 reserved
    assert (await store.acquire([current])).outcomes[0].remaining == 2


async def test_counter_refund_never_goes_below_zero(store: LimitStore) -> None:
    now = time.time()
    check = CounterCheck("rl:{t:z}:q", 10, 4, 0.0, now - 1, now + 3600, now + 7200)
    await store.acquire([check])
    await store.adjust([check], [-100])
    assert (await store.acquire([check])).outcomes[0].remaining == 6


async def test_swap_replaces_or_deletes_only_while_the_value_is_expected(
    store: LimitStore,
) -> None:
    """The compare-and-set an Idempotency-Key's first request ends with: its own claim
    is replaced (or freed); a claim someone else took since is left alone."""
    key = "idem:{t:s}:order"
    assert await store.put_if_absent(key, b"p-first", 60.0) is None
    assert not await store.swap(key, b"p-other", b"d-answer", 60.0)
    assert await store.get(key) == b"p-first"
    assert await store.swap(key, b"p-first", b"d-answer", 60.0)
    assert await store.get(key) == b"d-answer"
    assert not await store.swap(key, b"p-first", None, 60.0)
    assert await store.get(key) == b"d-answer"
    assert await store.swap(key, b"d-answer", None, 60.0)
    assert await store.get(key) is None
    # A claim that expired with nobody else holding the key: the owner's answer is kept.
    assert await store.swap(key, b"p-first", b"d-late", 60.0)
    assert await store.get(key) == b"d-late"
