"""Settlements on one Redis server go together: those that arrive while a settlement
call is in flight share the next script call (store/redis.py ``settle``), and each is
still decided on its own (store/lua/adjust.lua, one group per settlement): a reaped
reservation or a broken counter fails its own settlement only; a sender that stops
answers everyone waiting; closing the store sends what is queued first."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Connection, RedisCluster

from harness import SHARED_REDIS, free_port, redis_prefix
from quotagate.store.base import CounterCheck, LimitStore, ReservationCheck, StoreUnavailable
from quotagate.store.redis import RedisStore, hiredis_packed

PROBE = 1 << 40  # a probe under this limit reads a counter without refusing
START = time.time() - 60  # today, for these tests: a day that began a minute ago


def day(tenant: str, cost: int) -> CounterCheck:
    start = START
    return CounterCheck(f"rl:{{t:{tenant}}}:pro.tenant-tokens-day", 1000, cost, 0.0,
                        start, start + 86400, start + 2 * 86400, start - 86400)  # fmt: skip


async def used(store: LimitStore, check: CounterCheck) -> int:
    admission = await store.acquire([check._replace(limit=PROBE, cost=0)])
    return PROBE - admission.outcomes[0].remaining


async def reserved(store: LimitStore, tenants: list[str]) -> list[ReservationCheck]:
    """A request of each tenant, admitted with 100 tokens of its day reserved."""
    reservations = [ReservationCheck(f"rs:{{t:{t}}}", f"req-{t}", 60.0) for t in tenants]
    for t, r in zip(tenants, reservations, strict=True):
        assert (await store.acquire([day(t, 100), r])).allowed
    return reservations


def settling(
    store: LimitStore, tenants: list[str], reservations: list[ReservationCheck]
) -> list[asyncio.Task[bool]]:
    """Their settlements (each used 30), started as tasks: queued once they run a step."""
    return [
        asyncio.create_task(store.settle(r, [day(t, 100)], [-70]))
        for t, r in zip(tenants, reservations, strict=True)
    ]


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


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_broken_counter_fails_its_own_settlement_only(store: LimitStore) -> None:
    """The middle request's counter was overwritten with a string (WRONGTYPE for HMGET):
    its settlement raises StoreUnavailable and its group is left untouched (the
    reservation stays, for a reaper); the two sharing its call are settled."""
    assert isinstance(store, RedisStore)
    tenants = ["w1", "w2", "w3"]
    broken = day("w2", 0).key
    reservations = await reserved(store, tenants)
    await store.client.set(store.prefix + broken, "not a counter")
    calls = store.settle_calls
    results = await asyncio.gather(
        *(
            store.settle(r, [day(t, 100)], [-70])
            for t, r in zip(tenants, reservations, strict=True)
        ),
        return_exceptions=True,
    )
    assert store.settle_calls - calls == 1
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], StoreUnavailable)
    assert [await used(store, day(t, 0)) for t in ("w1", "w3")] == [30, 30]
    # Its group was left untouched (reads before writes): the reservation is there for
    # a reaper, not removed with its counters unrefunded.
    assert await store.client.zscore(store.prefix + "rs:{t:w2}", "req-w2") is not None


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_cancelled_sender_answers_everyone_waiting_and_the_next_is_sent(
    store: LimitStore,
) -> None:
    assert isinstance(store, RedisStore)
    tenants = ["c1", "c2", "c3"]
    reservations = await reserved(store, tenants)
    waiting = settling(store, tenants, reservations)
    await asyncio.sleep(0)  # one turn: all three queued, the sender created, not yet run
    assert store._sender is not None
    store._sender.cancel()
    # Bounded: a regression hangs here, and would fail rather than stall the suite.
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    # Nothing was sent: the reservations are still there, and a later settlement goes.
    assert await store.settle(reservations[0], [day("c1", 100)], [-70])
    assert await used(store, day("c1", 0)) == 30
    assert await used(store, day("c2", 0)) == 100


async def test_closing_the_store_sends_the_settlements_already_queued() -> None:
    store = RedisStore(SHARED_REDIS, prefix=redis_prefix(), timeout=2.0)
    tenants = ["q1", "q2"]
    reservations = await reserved(store, tenants)
    queued = settling(store, tenants, reservations)
    await asyncio.sleep(0)  # queued, not sent
    await store.close()
    assert [q.result() for q in queued] == [True, True]
    reader = RedisStore(SHARED_REDIS, prefix=store.prefix, timeout=2.0)
    try:
        assert [await used(reader, day(t, 0)) for t in tenants] == [30, 30]
    finally:
        await reader.close()


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_settlement_whose_caller_gave_up_before_it_was_sent_is_dropped(
    store: LimitStore,
) -> None:
    """Its caller's deadline passed while it waited (Redis slow): it is not sent later,
    so a frozen Redis cannot pile up settlements; its reservation stays, to be reaped."""
    assert isinstance(store, RedisStore)
    tenants = ["g1", "g2"]
    reservations = await reserved(store, tenants)
    gone = asyncio.create_task(store.settle(reservations[0], [day("g1", 100)], [-70]))
    kept = asyncio.create_task(store.settle(reservations[1], [day("g2", 100)], [-70]))
    await asyncio.sleep(0)  # both queued, not sent
    gone.cancel()  # as asyncio.timeout does at the engine's deadline
    assert await asyncio.wait_for(kept, 10)
    assert gone.cancelled()
    assert [await used(store, day(t, 0)) for t in tenants] == [100, 30]


@pytest.mark.parametrize("store", ["cluster"], indirect=True)
async def test_a_clusters_discovered_nodes_pack_with_hiredis(store: LimitStore) -> None:
    """Settlements in a Cluster are one call each (a call touches one slot), and every
    node the client found, not only the startup one, packs commands with hiredis."""
    assert isinstance(store, RedisStore) and isinstance(store.client, RedisCluster)
    tenants = ["k1", "k2", "k3"]
    reservations = await reserved(store, tenants)
    calls = store.settle_calls
    results = await asyncio.gather(
        *(store.settle(r, [day(t, 100)], [-70]) for t, r in zip(tenants, reservations, strict=True))
    )
    assert results == [True] * 3 and store.settle_calls - calls == 3
    assert [await used(store, day(t, 0)) for t in tenants] == [30] * 3
    nodes = store.client.get_nodes()
    assert len(nodes) == 3
    assert all(n.connection_class is hiredis_packed(Connection) for n in nodes)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_stopped_senders_late_callback_leaves_its_successor_alone(
    store: LimitStore,
) -> None:
    """A settlement that arrives between a sender's cancellation and its done-callback
    starts a new sender; the old callback must not fail what the new one now owns."""
    assert isinstance(store, RedisStore)
    first, second = await reserved(store, ["l1", "l2"])
    a = asyncio.create_task(store.settle(first, [day("l1", 100)], [-70]))
    await asyncio.sleep(0)  # queued; its sender created, not yet run
    assert store._sender is not None
    store._sender.cancel()
    b = asyncio.create_task(store.settle(second, [day("l2", 100)], [-70]))
    results = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 10)
    assert results == [True, True]
    assert [await used(store, day(t, 0)) for t in ("l1", "l2")] == [30, 30]


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_sender_that_fails_unexpectedly_says_so_and_answers_its_batch(
    store: LimitStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(store, RedisStore)
    [reservation] = await reserved(store, ["x1"])

    async def broken(keys: list[str], args: list[object]) -> list[int]:
        raise RuntimeError("a bug in the sender")

    monkeypatch.setattr(store, "_settle_group", broken)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.settle(reservation, [day("x1", 100)], [-70]), 10)
    await asyncio.sleep(0)  # the sender's done-callback runs a turn after its end
    assert "the settlement sender failed" in caplog.text
    assert "a bug in the sender" in caplog.text
