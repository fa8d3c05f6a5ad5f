"""Reserve, settle, crash, reap and cross a period boundary, in any order: a budget is
never overspent and no request is charged twice (memory store and the shared Redis).

A hypothesis state machine plays a gateway against one money budget (a calendar
counter) and its reservation records. The model charges every request to the period
it reserved in: its reservation while in flight (or once reaped), what it used once
settled. After every step the store's counter for the current period must hold exactly
the model's sum: a refund or a charge that lands in the wrong period, a settle applied
twice, or a settle applied after a reaper took the reservation all show up as a
difference.

A gateway hands the store the bounds of its current period and of the next one, as its
own clock sees them, and the store counts into the one that holds the store's own
clock, "so a gateway a little off across midnight still counts into the right period"
(limits/calendar.py). Here the calendar has one-minute periods and each reservation
comes from a gateway whose clock is on time, or has not yet crossed the last boundary
(behind), or has crossed the next one already (ahead): under a minute off either way.
Every request is charged to the store's period. The memory store's wall clock is
injected and moves across boundaries; the Redis server keeps its real one, inside
period 0 for the whole example.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import orjson
import pytest
import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from quotagate.store.base import CounterCheck, LimitStore, ReservationCheck
from quotagate.store.memory import MemoryStore
from quotagate.store.redis import RedisStore

T = TypeVar("T")

SHARED_REDIS = "redis://127.0.0.1:6379/0"
SKEWS = (0, 0, -1, 1)  # gateway clocks: mostly on time, some a period behind or ahead
BUDGET = 1_000  # micro-units per period
SPAN = 60.0  # seconds per calendar period: a gateway a period off is at most a minute off
PROBE_LIMIT = 1 << 40  # a probe under this limit reads the counter without refusing
BUDGET_KEY = "qb:{t:sm}:budget"
RESERVATIONS = "rs:{t:sm}"


@dataclass
class Reservation:
    member: str
    check: CounterCheck  # as the gateway built it: its period's bounds, the amount
    period: int  # the period it was charged to
    amount: int
    deadline: float  # memory: on the store's monotonic clock; Redis: local estimate
    short: bool
    charged: int  # what the period holds for it: the reservation, or what it used


class BudgetMachine(RuleBasedStateMachine):
    SHORT_TTL = 1.0
    LONG_TTL = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.mono = 1_000.0
        self.wall = time.time()
        # Period k is [epoch + k·SPAN, epoch + (k+1)·SPAN); the store starts mid-period 0
        # (a Redis example runs for seconds, well inside it).
        self.epoch = float(int(self.wall - SPAN / 2))  # whole seconds: exact boundaries
        self.period = 0  # the store's current period
        self.store = self.open_store()
        self.requests = 0
        self.in_flight: dict[str, Reservation] = {}
        self.crashed: dict[str, Reservation] = {}  # its gateway died: only a reaper ends it
        self.late: dict[str, Reservation] = {}  # reaped while its request still ran
        self.finished: dict[str, Reservation] = {}  # settled or reaped: never charged again

    def open_store(self) -> LimitStore:
        raise NotImplementedError

    def run(self, call: Awaitable[T]) -> T:
        return self.loop.run_until_complete(call)

    # -- the gateway's side --------------------------------------------------------

    def boundary(self, k: int) -> float:
        return self.epoch + k * SPAN

    def budget_check(self, cost: int, limit: int = BUDGET, skew: int = 0) -> CounterCheck:
        """The check of a gateway ``skew`` periods ahead of the store (-1: behind)."""
        k = self.period + skew
        bounds = self.boundary(k), self.boundary(k + 1), self.boundary(k + 2)
        return CounterCheck(BUDGET_KEY, limit, cost, 0.0, *bounds)

    def reservation(self, r: Reservation) -> ReservationCheck:
        return ReservationCheck(RESERVATIONS, r.member, self.ttl(r.short))

    def ttl(self, short: bool) -> float:
        return self.SHORT_TTL if short else self.LONG_TTL

    def deadline(self, ttl: float) -> float:
        return self.mono + ttl

    def spent(self, period: int) -> int:
        everyone = (self.in_flight, self.crashed, self.late, self.finished)
        return sum(r.charged for group in everyone for r in group.values() if r.period == period)

    def counter(self) -> int:
        """The store's counter for the gateway's current period, read exactly."""
        probe = self.budget_check(0, PROBE_LIMIT)
        admission = self.run(self.store.acquire([probe]))
        assert admission.allowed
        return PROBE_LIMIT - admission.outcomes[0].remaining

    # -- rules -----------------------------------------------------------------------

    @rule(amount=st.integers(1, BUDGET // 3), short=st.booleans(), skew=st.sampled_from(SKEWS))
    def reserve(self, amount: int, short: bool, skew: int) -> None:
        self.requests += 1
        member = orjson.dumps({"id": f"req{self.requests}", "micros": amount}).decode()
        check = self.budget_check(amount, skew=skew)
        ttl = self.ttl(short)
        deadline = self.deadline(ttl)
        admission = self.run(
            self.store.acquire([check, ReservationCheck(RESERVATIONS, member, ttl)])
        )
        period = self.period
        fits = self.spent(period) + amount <= BUDGET
        assert admission.allowed == fits, (
            f"reserving {amount} with {self.spent(period)} of {BUDGET} spent: "
            f"store {'admitted' if admission.allowed else 'refused'} (gateway skew {skew})"
        )
        if admission.allowed:
            r = Reservation(member, check, period, amount, deadline, short, amount)
            self.in_flight[member] = r

    def _settle(self, member: str, used: int) -> None:
        r = self.in_flight.pop(member)
        settled = self.run(self.store.settle(self.reservation(r), [r.check], [used - r.amount]))
        assert settled, f"settling {member} (never reaped) returned False"
        r.charged = used
        self.finished[member] = r

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        member = data.draw(st.sampled_from(sorted(self.in_flight)), label="request")
        amount = self.in_flight[member].amount
        # Mostly within the reservation; sometimes over it (an estimate that undercounted).
        used = data.draw(
            st.one_of(st.integers(0, amount), st.integers(amount, amount + amount // 2 + 1)),
            label="used",
        )
        self._settle(member, used)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        """No answer (an upstream failure): the whole reservation comes back."""
        self._settle(data.draw(st.sampled_from(sorted(self.in_flight)), label="request"), 0)

    @precondition(lambda self: self.late or self.finished)
    @rule(data=st.data(), used=st.integers(0, BUDGET))
    def settle_again(self, data: st.DataObject, used: int) -> None:
        """A second settle, or a settle after a reaper took the reservation: no effect."""
        done = {**self.finished, **self.late}
        member = data.draw(st.sampled_from(sorted(done)), label="request")
        r = done[member]
        settled = self.run(self.store.settle(self.reservation(r), [r.check], [used - r.amount]))
        assert not settled, f"{member} was settled or reaped already, yet settled again"
        self.finished[member] = self.late.pop(member, r)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        member = data.draw(st.sampled_from(sorted(self.in_flight)), label="request")
        self.crashed[member] = self.in_flight.pop(member)

    def take_reaped(self, taken: set[str]) -> None:
        for member in taken:
            if member in self.crashed:
                self.finished[member] = self.crashed.pop(member)
            else:
                self.late[member] = self.in_flight.pop(member)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def counter_holds_exactly_what_was_charged(self) -> None:
        period = self.period
        spent = self.spent(period)
        counter = self.counter()
        assert counter == spent, (
            f"the period's counter holds {counter}; its requests were charged {spent} "
            f"(in flight {self._sum(self.in_flight, period)}, crashed "
            f"{self._sum(self.crashed, period)}, reaped or settled "
            f"{self._sum(self.late, period) + self._sum(self.finished, period)})"
        )

    @invariant()
    def never_overspent(self) -> None:
        """Only usage above a reservation (reported after the fact) can pass the budget."""
        period = self.period
        overrun = sum(
            max(0, r.charged - r.amount) for r in self.finished.values() if r.period == period
        )
        assert self.spent(period) <= BUDGET + overrun
        assert all(r.charged >= 0 for r in self.finished.values())

    def _sum(self, group: dict[str, Reservation], period: int) -> int:
        return sum(r.charged for r in group.values() if r.period == period)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()


class MemoryBudget(BudgetMachine):
    def open_store(self) -> LimitStore:
        return MemoryStore(clock=lambda: self.mono, wall=lambda: self.wall)

    @rule(into=st.floats(0.0, SPAN - 1))
    def next_period(self, into: float) -> None:
        """The store's clock passes midnight (lands ``into`` seconds after it)."""
        self.period += 1
        self.wall = self.boundary(self.period) + into

    @rule(seconds=st.floats(0.0, 2 * BudgetMachine.LONG_TTL))
    def reap(self, seconds: float) -> None:
        self.mono += seconds
        outstanding = {**self.in_flight, **self.crashed}
        due = {m for m, r in outstanding.items() if r.deadline <= self.mono}
        taken = self.run(self.store.reap())
        assert sorted(taken) == sorted(due)
        self.take_reaped(set(taken))


class RedisBudget(BudgetMachine):
    """Redis reaps on its own clock: short reservations (tens of ms) become due while
    the reap rule polls; long ones never do within a run."""

    SHORT_TTL = 0.02
    LONG_TTL = 600.0
    REAP_DEADLINE = 3.0

    def open_store(self) -> LimitStore:
        self.prefix = f"qgtest:{secrets.token_hex(6)}:"
        return RedisStore(SHARED_REDIS, prefix=self.prefix, timeout=2.0)

    def deadline(self, ttl: float) -> float:
        return time.monotonic() + ttl

    @rule()
    def reap(self) -> None:
        outstanding = {**self.in_flight, **self.crashed}
        due = {m for m, r in outstanding.items() if r.short}
        taken: set[str] = set()
        give_up = time.monotonic() + self.REAP_DEADLINE
        while True:
            taken.update(self.run(self.store.reap()))
            assert taken <= due, f"reaped before their deadline: {sorted(taken - due)}"
            if taken == due:
                break
            assert time.monotonic() < give_up, f"never reaped: {sorted(due - taken)}"
            self.run(asyncio.sleep(0.005))  # poll interval while the deadlines pass
        self.take_reaped(taken)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            with redis.Redis.from_url(SHARED_REDIS) as client:
                keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
                if keys:
                    client.delete(*keys)


def machine_settings(examples: int, steps: int) -> settings:
    # No "explain" phase and one bug at a time: both re-run failing examples many
    # times over (measured: up to 110 s on Redis instead of 1-3 s to shrink).
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
    )


def test_memory_budget_is_never_overspent_nor_charged_twice() -> None:
    run_state_machine_as_test(MemoryBudget, settings=machine_settings(300, 50))


def test_redis_budget_is_never_overspent_nor_charged_twice() -> None:
    run_state_machine_as_test(RedisBudget, settings=machine_settings(100, 40))


# -- the same three situations, one by one, on the real clock -------------------------


@pytest.fixture(params=["memory", "redis"])
async def budget_store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    prefix = f"qgtest:{secrets.token_hex(6)}:"
    store = RedisStore(SHARED_REDIS, prefix=prefix, timeout=2.0)
    yield store
    await store.close()
    with redis.Redis.from_url(SHARED_REDIS) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


def calendar_check(cost: int, start: float, limit: int = BUDGET) -> CounterCheck:
    return CounterCheck(BUDGET_KEY, limit, cost, 0.0, start, start + SPAN, start + 2 * SPAN)


async def counted(store: LimitStore, start: float) -> int:
    """What the store's counter holds for the period starting at ``start``."""
    admission = await store.acquire([calendar_check(0, start, PROBE_LIMIT)])
    return PROBE_LIMIT - admission.outcomes[0].remaining


async def test_a_correction_after_midnight_stays_in_its_own_period(
    budget_store: LimitStore,
) -> None:
    """Reserved before midnight, settled after it, when the new day has spending of its
    own: the refund must not be taken off the new day's counter."""
    midnight = time.time() + 0.3
    yesterday = midnight - SPAN
    before = ReservationCheck(RESERVATIONS, "before-midnight", 60.0)
    assert (await budget_store.acquire([calendar_check(600, yesterday), before])).allowed
    deadline = time.monotonic() + 5
    while time.time() < midnight + 0.05:  # the store's clock (Redis: the server's)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)  # poll interval until the period has rolled over
    after = ReservationCheck(RESERVATIONS, "after-midnight", 60.0)
    assert (await budget_store.acquire([calendar_check(300, yesterday), after])).allowed
    assert await counted(budget_store, midnight) == 300
    assert await budget_store.settle(before, [calendar_check(600, yesterday)], [-200])
    assert await counted(budget_store, midnight) == 300, "yesterday's refund taken off today"


async def test_a_gateway_ahead_across_midnight_counts_into_the_stores_day(
    budget_store: LimitStore,
) -> None:
    """The store's clock is before midnight; one gateway's clock is past it already. Its
    request belongs to the store's day, and must not reset that day's counter."""
    midnight = time.time() + SPAN / 2
    today, tomorrow = midnight - SPAN, midnight
    assert (await budget_store.acquire([calendar_check(600, today)])).allowed
    assert (await budget_store.acquire([calendar_check(100, tomorrow)])).allowed
    assert await counted(budget_store, today) == 700, "the day's spending was forgotten"
    overspend = await budget_store.acquire([calendar_check(600, today)])
    assert not overspend.allowed, "admitted 1,300 against a budget of 1,000"


async def test_a_gateway_behind_midnight_settles_into_the_day_it_was_charged(
    budget_store: LimitStore,
) -> None:
    """The store's clock is past midnight; a gateway's clock is not yet. Its request is
    counted into the store's new day, and its refund must be applied there."""
    midnight = time.time() - SPAN / 2
    yesterday, today = midnight - SPAN, midnight
    late = ReservationCheck(RESERVATIONS, "late-clock", 60.0)
    assert (await budget_store.acquire([calendar_check(600, yesterday), late])).allowed
    assert await counted(budget_store, today) == 600
    assert await budget_store.settle(late, [calendar_check(600, yesterday)], [-500])
    assert await counted(budget_store, today) == 100, "the refund was dropped"
