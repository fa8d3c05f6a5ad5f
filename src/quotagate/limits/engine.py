"""The limits engine: one atomic store call per request, and what to do without one.

In front of a remote store it adds:
- a short timeout and a circuit breaker, so a dead or frozen Redis costs at most the
  timeout per request and then nothing until a probe finds it back;
- the per-limit failure policy: ``open`` (allow), ``closed`` (503), ``local`` (a
  per-instance limiter at limit ÷ expected instances);
- a negative cache: a counter known to refuse until T is answered locally until T.

Every degraded decision is counted; a summary is logged at most once per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from quotagate.errors import ServiceUnavailable
from quotagate.limits.policy import CompiledLimit
from quotagate.observability.metrics import (
    DEGRADED,
    NEGATIVE_CACHE_HITS,
    STORE_ACQUIRE,
    STORE_CIRCUIT_OPEN,
    STORE_ERRORS,
    STORE_SETTLE,
)
from quotagate.store.base import (
    Adjustable,
    Admission,
    Check,
    CheckOutcome,
    CounterCheck,
    LeaseCheck,
    LimitStore,
    RateCheck,
    ReservationCheck,
    StoreUnavailable,
    WindowCheck,
)
from quotagate.store.memory import MemoryStore

log = logging.getLogger(__name__)
T = TypeVar("T")
_LOG_EVERY = 10.0  # seconds between degraded-mode summaries
_MAX_ORPHANS = 100_000  # leases of unknown fate kept for a later release


@dataclass(slots=True, frozen=True)
class EngineSettings:
    timeout: float = 0.025
    instances: int = 1
    breaker_failures: int = 3
    breaker_cooldown: float = 1.0


class Breaker:
    """Consecutive failures open it; after the cooldown one probe may pass."""

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures_to_open = failures
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0

    def allows(self, now: float) -> bool:
        if self.failures < self.failures_to_open:
            return True
        if now >= self.open_until:
            self.open_until = now + self.cooldown  # this caller is the probe
            return True
        return False

    def record(self, ok: bool, now: float) -> None:
        if ok:
            if self.failures >= self.failures_to_open:
                STORE_CIRCUIT_OPEN.set(0)
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.open_until = now + self.cooldown
            STORE_CIRCUIT_OPEN.set(1)

    @property
    def state(self) -> str:
        return "open" if self.failures >= self.failures_to_open else "closed"


def _scaled(check: Check, instances: int) -> Check:
    """The per-instance share of a limit when each instance decides alone."""
    if isinstance(check, RateCheck):
        return check._replace(
            interval=check.interval * instances, capacity=max(1, check.capacity // instances)
        )
    assert not isinstance(check, ReservationCheck), "only limits are decided locally"
    return check._replace(limit=max(1, check.limit // instances))


class LimitEngine:
    def __init__(
        self,
        store: LimitStore,
        settings: EngineSettings = EngineSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        # The in-process store is called directly: no deadline, breaker or histogram.
        self._memory = store if isinstance(store, MemoryStore) else None
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown)
        self._clock = clock
        self._local = MemoryStore(clock)
        # refusing key → (until, the refused list's keys, its admission)
        self._refusing: dict[str, tuple[float, tuple[str, ...], Admission]] = {}
        self._degraded = 0
        self._next_log = 0.0
        self._last_error = ""
        self._orphans: dict[str, LeaseCheck] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        try:
            await self.store.start()
        except StoreUnavailable as exc:
            log.warning("limit store not reachable at start-up (%s); limits degrade", exc)

    async def admit(self, limits: Sequence[CompiledLimit], checks: Sequence[Check]) -> Admission:
        if self._memory is not None:  # in-process: microseconds, not worth a histogram
            return self._memory.acquire_now(checks)
        started = time.perf_counter()
        try:
            return await self._admit(limits, checks)
        finally:
            STORE_ACQUIRE.observe(time.perf_counter() - started)

    async def _admit(self, limits: Sequence[CompiledLimit], checks: Sequence[Check]) -> Admission:
        now = self._clock()
        if (cached := self._cached_refusal(checks, now)) is not None:
            return cached
        if self.breaker.allows(now):
            try:
                async with asyncio.timeout(self.settings.timeout):
                    admission = await self.store.acquire(checks)
            except (StoreUnavailable, TimeoutError) as exc:
                self._last_error = str(exc) or type(exc).__name__
                STORE_ERRORS.labels(type(exc).__name__).inc()
                self.breaker.record(False, self._clock())
                # The script may still run once Redis answers (it was sent): its leases
                # would be held by nobody. Release them once the store is back.
                self._orphan(c for c in checks if isinstance(c, LeaseCheck))
            else:
                self.breaker.record(True, now)
                self._remember_refusal(checks, admission, now)
                if self._orphans:
                    self._release_orphans()
                return admission
        return self._degrade(limits, checks)

    async def release(self, leases: Sequence[LeaseCheck]) -> None:
        if not leases:
            return
        try:
            async with asyncio.timeout(self.settings.timeout * 4):
                await self.store.release(leases)
        except (StoreUnavailable, TimeoutError):
            STORE_ERRORS.labels("release").inc()
            self._orphan(leases)  # retried once the store answers again; the TTL backs it
        await self._local.release(leases)

    def _orphan(self, leases: Iterable[LeaseCheck]) -> None:
        for lease in leases:
            if len(self._orphans) < _MAX_ORPHANS:
                self._orphans[lease.lease_id + lease.key] = lease

    def _release_orphans(self) -> None:
        """Release (ZREM: harmless if already gone) leases whose fate was unknown."""
        orphans, self._orphans = list(self._orphans.values()), {}

        async def release() -> None:
            try:
                async with asyncio.timeout(self.settings.timeout * 20):
                    await self.store.release(orphans)
            except (StoreUnavailable, TimeoutError):
                self._orphan(orphans)

        task = asyncio.ensure_future(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def adjust(self, checks: Sequence[Adjustable], deltas: Sequence[int]) -> None:
        """Settle reserved amounts (refund or charge). Off the response path; when the
        store cannot take it the correction is counted and dropped."""
        if self._memory is not None:
            self._memory.adjust_now(checks, deltas)
            return
        try:
            async with asyncio.timeout(self.settings.timeout * 4):
                await self.store.adjust(checks, deltas)
        except (StoreUnavailable, TimeoutError):
            STORE_ERRORS.labels("adjust").inc()

    async def settle(
        self,
        reservation: ReservationCheck,
        checks: Sequence[Adjustable],
        deltas: Sequence[int],
    ) -> bool:
        """Replace a request's reservation by what it used. False when a reaper took the
        reservation first (it is in the ledger as unsettled) or the store cannot answer
        in time (then the reservation stays charged until a settlement already in
        flight lands late, or a reaper takes it: never silently forgiven)."""
        if self._memory is not None:
            return self._memory.settle_now(reservation, checks, deltas)
        started = time.perf_counter()
        try:
            return await self._settle(reservation, checks, deltas)
        finally:
            STORE_SETTLE.observe(time.perf_counter() - started)

    async def _settle(
        self, reservation: ReservationCheck, checks: Sequence[Adjustable], deltas: Sequence[int]
    ) -> bool:
        try:
            async with asyncio.timeout(self.settings.timeout * 4):
                return await self.store.settle(reservation, checks, deltas)
        except (StoreUnavailable, TimeoutError):
            STORE_ERRORS.labels("settle").inc()
            return False

    async def reap(self, limit: int = 1000) -> list[str]:
        """Reservations past their deadline, taken by this instance (empty when the
        store cannot answer: another pass, or another instance, takes them later)."""
        try:
            async with asyncio.timeout(max(1.0, self.settings.timeout * 40)):
                return await self.store.reap(limit)
        except (StoreUnavailable, TimeoutError):
            STORE_ERRORS.labels("reap").inc()
            return []

    async def put_if_absent(self, key: str, value: bytes, ttl: float) -> bytes | None:
        """The store's set-if-absent, bounded by a deadline; StoreUnavailable past it."""
        return await self._bounded(self.store.put_if_absent(key, value, ttl))

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._bounded(self.store.put(key, value, ttl))

    async def get(self, key: str) -> bytes | None:
        return await self._bounded(self.store.get(key))

    async def swap(self, key: str, expected: bytes, value: bytes | None, ttl: float) -> bool:
        """The store's compare-and-set, bounded by a deadline; StoreUnavailable past it."""
        return await self._bounded(self.store.swap(key, expected, value, ttl))

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.settings.timeout * 4):
                return await call
        except TimeoutError as exc:
            raise StoreUnavailable("timed out") from exc

    def _cached_refusal(self, checks: Sequence[Check], now: float) -> Admission | None:
        for check in checks:
            entry = self._refusing.get(check.key)
            if entry is None:
                continue
            until, keys, admission = entry
            if until <= now:
                del self._refusing[check.key]
                continue
            answer = _reshaped(admission, keys, checks, check.key)
            if answer is None:
                continue
            NEGATIVE_CACHE_HITS.inc()
            return _aged(answer, until - now)
        return None

    def _remember_refusal(self, checks: Sequence[Check], admission: Admission, now: float) -> None:
        if admission.allowed:
            return
        check = checks[admission.denied]
        # A single-unit rate check or a full window refuses every request until
        # retry_after; a larger amount or a lease (freed at any moment) could fit sooner.
        single = isinstance(check, RateCheck | CounterCheck) and check.cost == 1
        if single or isinstance(check, WindowCheck):
            retry = admission.outcomes[admission.denied].retry_after
            if len(self._refusing) > 100_000:
                self._refusing.clear()
            keys = tuple(c.key for c in checks)
            self._refusing[check.key] = (now + retry, keys, admission)

    def _degrade(self, limits: Sequence[CompiledLimit], checks: Sequence[Check]) -> Admission:
        self._note_degraded()
        local_index = []
        for index, limit in enumerate(limits):
            if limit.on_store_error == "closed":
                DEGRADED.labels("closed").inc()
                raise ServiceUnavailable(
                    "Rate limits cannot be checked right now; try again shortly.",
                    code="limits_unavailable",
                    headers=[(b"retry-after", b"1")],
                )
            if limit.on_store_error == "local":
                local_index.append(index)
        outcomes = [CheckOutcome(limit.amount, 0.0, 0.0) for limit in limits]
        DEGRADED.labels("open").inc(len(limits) - len(local_index))
        if not local_index:
            return Admission(True, tuple(outcomes))
        DEGRADED.labels("local").inc(len(local_index))
        n = self.settings.instances
        local = self._local.acquire_now([_scaled(checks[i], n) for i in local_index])
        for i, outcome in zip(local_index, local.outcomes, strict=True):
            outcomes[i] = outcome
        denied = local_index[local.denied] if not local.allowed else -1
        return Admission(local.allowed, tuple(outcomes), denied)

    def _note_degraded(self) -> None:
        self._degraded += 1
        now = self._clock()
        if now >= self._next_log:
            log.warning(
                "limit store unavailable (%s): %d degraded decisions in the last %.0fs "
                "(breaker %s)",
                self._last_error,
                self._degraded,
                _LOG_EVERY,
                self.breaker.state,
            )
            self._degraded = 0
            self._next_log = now + _LOG_EVERY

    @property
    def store_state(self) -> str:
        return "ok" if self.breaker.state == "closed" else "degraded"


def _reshaped(
    admission: Admission, keys: tuple[str, ...], checks: Sequence[Check], refusing: str
) -> Admission | None:
    """A cached refusal as an answer to ``checks``: its outcomes in their order and the
    refusing key's index among them. Lists differ when the same counter is checked with
    other limits (a fallback moved after admission checks only the limits it gains; a
    batch request's limits come in another order). None when the cache holds no outcome
    for one of ``checks``: the store decides."""
    if tuple([c.key for c in checks]) == keys:  # the same list: the common case
        return admission
    held = dict(zip(keys, admission.outcomes, strict=False))
    if not all(c.key in held for c in checks):
        return None
    denied = next(i for i, c in enumerate(checks) if c.key == refusing)
    return Admission(False, tuple(held[c.key] for c in checks), denied)


def _aged(admission: Admission, left: float) -> Admission:
    """A cached refusal with its times brought up to now."""
    elapsed = admission.outcomes[admission.denied].retry_after - left
    outcomes = tuple(
        CheckOutcome(
            o.remaining, max(0.0, o.reset_after - elapsed), max(0.0, o.retry_after - elapsed)
        )
        for o in admission.outcomes
    )
    return Admission(False, outcomes, admission.denied)
