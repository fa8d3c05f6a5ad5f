"""A settlement's correction (its refund or extra charge) goes to the window or period
the request was charged in or, once that has ended, nowhere: never to the new one
(store/lua/adjust.lua, MemoryStore.adjust_now). Fixed-window token limits on every
store, and a Cluster's counters outside the tenant's slot, settled by a second call.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.crc import key_slot

from quotagate.store.base import CounterCheck, LimitStore, ReservationCheck

PROBE = 1 << 40  # a probe under this limit reads a counter without refusing
RS = "rs:{t:acme}"  # the tenant's reservation set (budget/reserve.py)
GLOBAL = "rl:{gpt-4}:global.model-tokens-day:gpt-4"  # a cross-tenant calendar counter


def calendar(key: str, cost: int, start: float, span: float) -> CounterCheck:
    return CounterCheck(key, 1000, cost, 0.0, start, start + span, start + 2 * span)


async def counted(store: LimitStore, check: CounterCheck) -> int:
    admission = await store.acquire([check._replace(limit=PROBE, cost=0)])
    return PROBE - admission.outcomes[0].remaining


@pytest.mark.parametrize("store", ["cluster"], indirect=True)
async def test_cluster_settle_of_a_cross_slot_calendar_counter_stays_in_its_period(
    store: LimitStore,
) -> None:
    """Reserved before midnight on a global-scope daily counter (another slot than the
    tenant's reservation set), settled after it with a refund: today's counter is
    untouched, as on one node (the second call passes the admission's instant)."""
    assert key_slot(GLOBAL.encode()) != key_slot(RS.encode())
    midnight = time.time() + 0.3
    yesterday = midnight - 60
    before = ReservationCheck(RS, "before-midnight", 60.0)
    assert (await store.acquire([calendar(GLOBAL, 600, yesterday, 60), before])).allowed
    await asyncio.sleep(midnight + 0.05 - time.time())  # past the period's end
    assert (await store.acquire([calendar(GLOBAL, 300, yesterday, 60)])).allowed
    today = calendar(GLOBAL, 0, midnight, 60)
    assert await counted(store, today) == 300
    assert await store.settle(before, [calendar(GLOBAL, 600, yesterday, 60)], [-200])
    assert await counted(store, today) == 300, "yesterday's refund taken off today"


async def test_fixed_window_settle_after_rollover_stays_in_its_window(store: LimitStore) -> None:
    """A tokens fixed_window counter (settled: config/snapshot.py) reserved 600 in window
    W and settled in W+1 with a refund of 500 leaves W+1's 300 alone (it used to drop
    to 0: free tokens; a positive delta would have charged W+1)."""
    check = CounterCheck("rl:{t:acme}:free.key-tokens-1s-fixed:k", 1000, 600, window=1.0)
    probe = check._replace(limit=PROBE, cost=0)
    reservation = ReservationCheck(RS, "fixed-window", 60.0)
    while True:  # start early in a window, so the admission cannot straddle a boundary
        first = await store.acquire([probe])
        if first.outcomes[0].reset_after > 0.5:
            break
        await asyncio.sleep(first.outcomes[0].reset_after + 0.01)
    admitted = await store.acquire([check, reservation])
    assert admitted.allowed
    await asyncio.sleep(admitted.outcomes[0].reset_after + 0.05)  # into window W+1
    assert (await store.acquire([check._replace(cost=300)])).allowed
    assert PROBE - (await store.acquire([probe])).outcomes[0].remaining == 300
    assert await store.settle(reservation, [check], [-500])
    assert PROBE - (await store.acquire([probe])).outcomes[0].remaining == 300, (
        "window W's refund taken off window W+1"
    )
