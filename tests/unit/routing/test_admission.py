"""The admission queue on one deployment: slots handed over weighted-fair by priority,
waits bounded by max_wait, a full queue sheds the lowest priority first."""

from __future__ import annotations

import asyncio

import pytest

from quotagate.config.schema import BreakerConfig
from quotagate.errors import Shed
from quotagate.routing.health import DeploymentHealth


def deployment(limit: int) -> DeploymentHealth:
    health = DeploymentHealth("gpt-4", "eu-1", "eu-west", BreakerConfig(), lambda: 0.0)
    health.gate.limit = limit
    return health


async def test_slots_go_to_priorities_in_proportion_and_higher_first_on_a_tie() -> None:
    health = deployment(1)
    gate = health.gate
    assert await gate.enter(0, 10, 100) == 0  # a free slot: taken at once (no probe)
    served: list[int] = []

    async def wait(priority: int) -> None:
        await gate.enter(priority, 10, 100)
        served.append(priority)

    tasks = [asyncio.create_task(wait(p)) for p in [0] * 12 + [10] * 12]
    await asyncio.sleep(0)  # every waiter is queued
    assert gate.queued == 24
    for _ in range(24):
        health.end(False)  # a request ends: its slot goes to the next waiter
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    first = served[:12]
    # Weights 11 : 1 (priority + 1): priority 10 takes the first slots although the
    # others were waiting first, and at most one in 12 goes to priority 0 meanwhile.
    assert first.count(10) >= 11 and first[0] == 10, served
    assert sorted(served) == [0] * 12 + [10] * 12  # nobody starves
    assert health.in_flight == 1


async def test_a_wait_longer_than_max_wait_is_shed() -> None:
    health = deployment(1)
    await health.gate.enter(0, 10, 100)
    with pytest.raises(Shed) as err:
        await health.gate.enter(0, 0.05, 100)
    assert err.value.status == 503 and err.value.code == "overloaded"
    assert (b"retry-after", b"1") in err.value.headers
    assert health.gate.queued == 0 and health.in_flight == 1


async def test_a_full_queue_sheds_the_newest_of_the_lowest_priority() -> None:
    health = deployment(1)
    gate = health.gate
    await gate.enter(5, 10, 2)
    low_old = asyncio.create_task(gate.enter(0, 10, 2))
    low_new = asyncio.create_task(gate.enter(0, 10, 2))
    await asyncio.sleep(0)
    with pytest.raises(Shed):  # the same priority as the lowest waiting: refused
        await gate.enter(0, 10, 2)
    high = asyncio.create_task(gate.enter(9, 10, 2))
    await asyncio.sleep(0)
    with pytest.raises(Shed):
        await low_new  # displaced by the higher priority
    assert gate.queued == 2
    health.end(False)
    await high  # the higher priority gets the next slot
    assert not low_old.done()
    health.end(False)
    await low_old
    assert gate.queued == 0


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    health = deployment(1)
    await health.gate.enter(0, 10, 10)
    waiter = asyncio.create_task(health.gate.enter(0, 10, 10))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert health.gate.queued == 0
    health.end(False)
    assert health.in_flight == 0


async def test_reserved_slots_are_kept_for_the_high_priority() -> None:
    health = deployment(2)
    gate = health.gate
    gate.reserved, gate.reserved_for = 1, 10
    await gate.enter(0, 10, 10)  # the one slot that is not reserved
    low = asyncio.create_task(gate.enter(0, 10, 10))
    await asyncio.sleep(0)
    assert gate.queued == 1 and health.in_flight == 1  # the last slot is kept
    await gate.enter(10, 10, 10)  # enterprise: at once, although free traffic waits
    assert health.in_flight == 2 and not low.done()
    health.end(False)  # the free request ends: one slot free, which is the reserved one
    await asyncio.sleep(0)
    assert not low.done()
    health.end(False)  # enterprise ends too
    await low
    assert health.in_flight == 1


async def test_interactive_waiters_go_before_batch_ones_of_the_same_priority() -> None:
    health = deployment(1)
    gate = health.gate
    await gate.enter(0, 10, 10)
    order: list[str] = []

    async def wait(name: str, batch: bool) -> None:
        await gate.enter(0, 10, 10, batch)
        order.append(name)

    tasks = [asyncio.create_task(wait(f"batch-{i}", True)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait("interactive", False)))
    await asyncio.sleep(0)
    for _ in range(4):
        health.end(False)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["interactive", "batch-0", "batch-1", "batch-2"]


async def test_a_slot_handed_over_to_a_waiter_that_is_leaving_is_given_back() -> None:
    health = deployment(1)
    await health.gate.enter(0, 10, 10)
    waiter = asyncio.create_task(health.gate.enter(0, 10, 10))
    await asyncio.sleep(0)
    health.end(0)  # the slot is handed over to the waiter...
    waiter.cancel()  # ...which is cancelled before it could take it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert health.in_flight == 0 and health.gate.queued == 0


async def test_one_slot_is_never_reserved() -> None:
    health = deployment(1)
    health.gate.reserved, health.gate.reserved_for = 1, 10
    assert await health.gate.enter(0, 10, 10) == 0  # the only slot: free traffic may take it


async def test_making_room_skips_a_waiter_that_already_left() -> None:
    health = deployment(1)
    gate = health.gate
    await gate.enter(0, 10, 1)
    low = asyncio.create_task(gate.enter(0, 10, 1))
    await asyncio.sleep(0)
    low.cancel()  # cancelled, but its task has not run yet
    with pytest.raises(Shed):  # the full queue's only waiter left: the newcomer waits...
        await gate.enter(5, 0.01, 1)  # ...until its own max_wait, not a 500
    with pytest.raises(asyncio.CancelledError):
        await low
    assert gate.queued == 0
