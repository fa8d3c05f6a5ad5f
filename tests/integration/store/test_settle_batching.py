"""Settlements on one Redis server go together: those that arrive while a settlement
call is in flight share the next script call (store/redis.py ``settle``), and each is
still decided on its own (store/lua/adjust.lua, one group per settlement)."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import free_port, redis_prefix
from quotagate.store.base import CounterCheck, LimitStore, ReservationCheck, StoreUnavailable
from quotagate.store.redis import RedisStore

PROBE = 1 << 40  # a probe under this limit reads a counter without refusing
START = time.time() - 60  # today, for these tests: a day that began a minute ago


def day(tenant: str, cost: int) -> CounterCheck:
    start = START
    return CounterCheck(f"rl:{{t:{tenant}}}:pro.tenant-tokens-day", 1000, cost, 0.0,
                        start, start + 86400, start + 2 * 86400, start - 86400)  # fmt: skip


async def used(store: LimitStore, check: CounterCheck) -> int:
    admission = await store.acquire([check._replace(limit=PROBE, cost=0)])
    return PROBE - admission.outcomes[0].remaining


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_concurrent_settlements_share_a_call_and_each_is_decided_alone(
    store: LimitStore,
) -> None:
    """60 requests of 60 tenants each reserved 100 tokens and used 30; settled at once,
    with one of them settled twice. One script call carries them (all arrive before the
    first is sent), every counter holds 30, and the second settlement of the same
    reservation finds it gone (False) without refunding again."""
    assert isinstance(store, RedisStore)
    tenants = [f"b{i}" for i in range(60)]
    reservations = {t: ReservationCheck(f"rs:{{t:{t}}}", f"req-{t}", 60.0) for t in tenants}
    for t in tenants:
        assert (await store.acquire([day(t, 100), reservations[t]])).allowed
    calls = store.settle_calls
    settlements = [(t, reservations[t]) for t in tenants] + [("b0", reservations["b0"])]
    results = await asyncio.gather(*(store.settle(r, [day(t, 100)], [-70]) for t, r in settlements))
    assert store.settle_calls - calls == 1, "settlements sent one call each"
    assert results[1:60] == [True] * 59
    assert sorted([results[0], results[60]]) == [False, True]
    assert [await used(store, day(t, 0)) for t in tenants] == [30] * 60


async def test_a_failed_call_fails_each_settlement_in_it_and_the_next_is_tried() -> None:
    """Redis unreachable: every waiting settlement raises StoreUnavailable (the engine
    counts it; the reservation stays and is reaped), none hangs, and a later settlement
    is sent again rather than waiting on a sender that died."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix=redis_prefix(), timeout=1.0)
    try:
        reservation = ReservationCheck("rs:{t:x}", "req", 60.0)
        results = await asyncio.gather(
            *(store.settle(reservation, [day("x", 10)], [-5]) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        calls = store.settle_calls
        with pytest.raises(StoreUnavailable):
            await store.settle(reservation, [day("x", 10)], [-5])
        assert store.settle_calls == calls + 1
    finally:
        await store.close()
