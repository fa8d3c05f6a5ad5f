"""The limits engine's behaviour without its store: breaker, failure policies, negative
cache. Units with a scripted store; the real stores are covered by the contract tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from quotagate.config.schema import LimitRule
from quotagate.errors import ServiceUnavailable
from quotagate.limits.engine import EngineSettings, LimitEngine
from quotagate.limits.policy import CompiledLimit, ScopeValues, compile_limit
from quotagate.store.base import (
    Admission,
    Check,
    LeaseCheck,
    RateCheck,
    StoreUnavailable,
)
from quotagate.store.memory import MemoryStore

VALUES = ScopeValues("t1", "k1", "u1", "1.2.3.4", "gpt-4", "chat.completions")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedStore:
    """Delegates to a memory store until told to fail or hang."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.mode = "ok"
        self.calls = 0

    async def acquire(self, checks: Sequence[Check]) -> Admission:
        self.calls += 1
        if self.mode == "fail":
            raise StoreUnavailable("redis: ConnectionError")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return await self.inner.acquire(checks)

    async def adjust(self, checks: Sequence[RateCheck], deltas: Sequence[int]) -> None: ...
    async def release(self, leases: Sequence[LeaseCheck]) -> None: ...
    async def start(self) -> None: ...
    async def ping(self) -> bool:
        return self.mode == "ok"

    async def close(self) -> None: ...


def engine(store: ScriptedStore, clock: Clock, instances: int = 1) -> LimitEngine:
    return LimitEngine(store, EngineSettings(0.05, instances, 3, 1.0), clock)


def limit(policy: str, requests: int = 10) -> tuple[list[CompiledLimit], list[Check]]:
    rule = LimitRule.model_validate(
        {"scope": "key", "requests": requests, "per": 60, "on_store_error": policy}
    )
    compiled = compile_limit(rule)
    return [compiled], [compiled.check(VALUES, "id1")]


async def test_open_policy_allows_while_the_store_fails() -> None:
    store, clock = ScriptedStore(), Clock()
    store.mode = "fail"
    limits, checks = limit("open")
    assert all([(await engine(store, clock).admit(limits, checks)).allowed for _ in range(50)])


async def test_closed_policy_answers_503_while_the_store_fails() -> None:
    store, clock = ScriptedStore(), Clock()
    store.mode = "fail"
    limits, checks = limit("closed")
    with pytest.raises(ServiceUnavailable) as info:
        await engine(store, clock).admit(limits, checks)
    assert info.value.code == "limits_unavailable"


async def test_local_policy_divides_the_limit_by_the_instances() -> None:
    store, clock = ScriptedStore(), Clock()
    store.mode = "fail"
    limits, checks = limit("local", requests=12)
    eng = engine(store, clock, instances=4)
    results = [(await eng.admit(limits, checks)).allowed for _ in range(10)]
    assert results == [True] * 3 + [False] * 7


async def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    store, clock = ScriptedStore(), Clock()
    store.mode = "fail"
    limits, checks = limit("open")
    eng = engine(store, clock)
    for _ in range(10):
        await eng.admit(limits, checks)
    assert store.calls == 3 and eng.breaker.state == "open"
    store.mode = "ok"
    clock.now += 1.01
    assert (await eng.admit(limits, checks)).allowed
    assert store.calls == 4 and eng.breaker.state == "closed"


async def test_a_hanging_store_costs_at_most_the_timeout() -> None:
    store, clock = ScriptedStore(), Clock()
    store.mode = "hang"
    limits, checks = limit("open")
    eng = engine(store, clock)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await eng.admit(limits, checks)).allowed
    assert loop.time() - started < 0.5


async def test_negative_cache_answers_a_known_refusal_without_the_store() -> None:
    store, clock = ScriptedStore(), Clock()
    limits, checks = limit("local", requests=2)
    eng = engine(store, clock)
    assert (await eng.admit(limits, checks)).allowed
    assert (await eng.admit(limits, checks)).allowed
    refused = await eng.admit(limits, checks)
    assert not refused.allowed
    calls = store.calls
    again = await eng.admit(limits, checks)
    assert not again.allowed and store.calls == calls
    assert 0 < again.outcomes[0].retry_after <= refused.outcomes[0].retry_after
    clock.now += refused.outcomes[0].retry_after + 0.01
    await eng.admit(limits, checks)
    assert store.calls == calls + 1


def two_limits() -> tuple[list[CompiledLimit], list[Check]]:
    """A plan-wide limit that never refuses and a per-model one that refuses the second
    request: the shape a fallback's move meets (it checks only the model's limit)."""
    wide, per_model = (
        compile_limit(LimitRule.model_validate({"scope": scope, "requests": n, "per": 60}))
        for scope, n in (("key", 1000), ("model", 1))
    )
    limits = [wide, per_model]
    return limits, [lim.check(VALUES, "id1") for lim in limits]


async def test_a_cached_refusal_answers_a_shorter_list_in_that_lists_order() -> None:
    store, clock = ScriptedStore(), Clock()
    limits, checks = two_limits()
    eng = engine(store, clock)
    assert (await eng.admit(limits, checks)).allowed
    refused = await eng.admit(limits, checks)
    assert not refused.allowed and refused.denied == 1
    calls = store.calls
    alone = await eng.admit(limits[1:], checks[1:])  # the per-model limit only
    assert store.calls == calls  # answered from the cache...
    assert not alone.allowed and alone.denied == 0  # ...for the list it was asked about
    assert len(alone.outcomes) == 1 and alone.outcomes[0].remaining == 0
    assert alone.outcomes[0].retry_after > 0


async def test_a_cached_refusal_of_a_shorter_list_leaves_a_longer_one_to_the_store() -> None:
    store, clock = ScriptedStore(), Clock()
    limits, checks = two_limits()
    eng = engine(store, clock)
    assert (await eng.admit(limits[1:], checks[1:])).allowed
    assert not (await eng.admit(limits[1:], checks[1:])).allowed  # cached: one outcome
    calls = store.calls
    both = await eng.admit(limits, checks)
    assert store.calls == calls + 1  # no outcome cached for the plan-wide limit
    assert not both.allowed and both.denied == 1 and len(both.outcomes) == 2
    assert both.outcomes[0].remaining > 0
