"""In-process limit store: the embedded default, exact within one process.

Atomic because a batch is decided without an ``await`` on the single event-loop
thread. Uses a monotonic clock (injected for tests) so wall-clock jumps change nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from quotagate.limits.gcra import gcra_step
from quotagate.store.base import (
    Adjustable,
    Admission,
    Check,
    CheckOutcome,
    CounterCheck,
    LeaseCheck,
    RateCheck,
    ReservationCheck,
    WindowCheck,
)

# Sweep full (expired) buckets every this many acquisitions: amortised O(1), keeps
# memory bounded by the number of keys active within one refill period.
_SWEEP_EVERY = 10_000
_LEASE_RETRY = 1.0  # a lease frees when a request ends: suggest a short retry
_RESERVED = CheckOutcome(0, 0.0, 0.0)  # a reservation always "allows"


class MemoryStore:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        # Window counters (fixed and calendar periods) are bounded by instants of the
        # calendar, so they run on the wall clock; rolling limits on the monotonic one.
        self._wall = wall
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._logs: dict[str, deque[float]] = {}
        self._log_windows: dict[str, float] = {}
        self._counters: dict[str, tuple[float, int, float]] = {}  # key → (start, used, end)
        # member → (deadline, admitted at on the wall clock)
        self._reservations: dict[str, tuple[float, float]] = {}
        self._values: dict[str, tuple[bytes, float]] = {}  # key → (value, expiry)
        self._until_sweep = _SWEEP_EVERY

    async def acquire(self, checks: Sequence[Check]) -> Admission:
        return self.acquire_now(checks)

    def acquire_now(self, checks: Sequence[Check]) -> Admission:
        now, wall = self._clock(), self._wall()
        outcomes: list[CheckOutcome] = []
        # What each check writes if all allow: a GCRA TAT, a log entry's time, a lease or
        # reservation deadline, or a counter's period (start, end). ``type() is``, not
        # isinstance: a request's checks are dispatched several times each.
        writes: list[Any] = []
        write: Any
        denied = -1
        for index, check in enumerate(checks):
            if type(check) is RateCheck:
                allowed, write, outcome = self._rate(check, now)
            elif type(check) is CounterCheck:
                allowed, write, outcome = self._counter(check, wall)
            elif type(check) is ReservationCheck:
                allowed, write, outcome = True, now + check.ttl, _RESERVED
            elif type(check) is WindowCheck:
                allowed, write, outcome = self._window(check, now)
            else:
                assert isinstance(check, LeaseCheck)
                allowed, write, outcome = self._lease(check, now)
            outcomes.append(outcome)
            writes.append(write)
            if not allowed and denied < 0:
                denied = index
        if denied >= 0:
            return Admission(False, tuple(outcomes), denied)
        for check, write in zip(checks, writes, strict=True):
            if type(check) is RateCheck:
                self._tats[check.key] = write
            elif type(check) is CounterCheck:
                start, end = write
                self._counters[check.key] = (start, self._used(check.key, start) + check.cost, end)
            elif type(check) is ReservationCheck:
                self._reservations[check.member] = (write, wall)
            elif type(check) is WindowCheck:
                self._logs.setdefault(check.key, deque()).append(write)
                self._log_windows[check.key] = check.window
            else:
                assert isinstance(check, LeaseCheck)
                self._leases.setdefault(check.key, {})[check.lease_id] = write
        self._maybe_sweep(now)
        return Admission(True, tuple(outcomes))

    def _rate(self, check: RateCheck, now: float) -> tuple[bool, float, CheckOutcome]:
        r = gcra_step(
            self._tats.get(check.key, now), now, check.interval, check.capacity, check.cost
        )
        return r.allowed, r.new_tat, CheckOutcome(r.remaining, r.reset_after, r.retry_after)

    def _bounds(self, check: CounterCheck, now: float) -> tuple[float, float]:
        if check.window:
            start = (now // check.window) * check.window
            return start, start + check.window
        if check.start <= now < check.end:  # nearly always: not at a period's edge
            return check.start, check.end
        return check.period_at(now)

    def _used(self, key: str, start: float) -> int:
        held = self._counters.get(key)
        return held[1] if held is not None and held[0] == start else 0

    def _counter(
        self, check: CounterCheck, now: float
    ) -> tuple[bool, tuple[float, float], CheckOutcome]:
        start, end = self._bounds(check, now)
        used = self._used(check.key, start)
        left = check.limit - used - check.cost
        if left >= 0:
            return True, (start, end), CheckOutcome(left, end - now, 0.0)
        return False, (start, end), CheckOutcome(max(0, check.limit - used), end - now, end - now)

    def _window(self, check: WindowCheck, now: float) -> tuple[bool, float, CheckOutcome]:
        log = self._logs.get(check.key)
        if log:
            while log and log[0] <= now - check.window:
                log.popleft()
        held = len(log) if log else 0
        if held < check.limit:
            return True, now, CheckOutcome(check.limit - held - 1, check.window, 0.0)
        assert log
        oldest, newest = log[0], log[-1]
        return False, 0.0, CheckOutcome(0, newest + check.window - now, oldest + check.window - now)

    def _lease(self, check: LeaseCheck, now: float) -> tuple[bool, float, CheckOutcome]:
        held = self._leases.get(check.key)
        if held:
            for lease_id in [k for k, expiry in held.items() if expiry <= now]:
                del held[lease_id]
        count = len(held) if held else 0
        if count < check.limit:
            return True, now + check.ttl, CheckOutcome(check.limit - count - 1, 0.0, 0.0)
        return False, 0.0, CheckOutcome(0, 0.0, _LEASE_RETRY)

    async def adjust(
        self, checks: Sequence[Adjustable], deltas: Sequence[int], at: float | None = None
    ) -> None:
        self.adjust_now(checks, deltas, at)

    def adjust_now(
        self, checks: Sequence[Adjustable], deltas: Sequence[int], at: float | None = None
    ) -> None:
        """``at``: when the request was admitted (wall clock), for window and calendar
        counters: a correction goes to the window or period it was charged in, or nowhere
        if that has ended."""
        now = self._clock()
        admitted = self._wall() if at is None else at
        counters = self._counters
        for check, delta in zip(checks, deltas, strict=True):
            if type(check) is CounterCheck:
                held = counters.get(check.key)
                if held is None:
                    continue
                if held[0] == self._bounds(check, admitted)[0]:  # the window it was in
                    counters[check.key] = (held[0], max(0, held[1] + delta), held[2])
                continue
            assert isinstance(check, RateCheck)
            tat = self._tats.get(check.key)
            if tat is None and delta <= 0:
                continue
            new_tat = max(tat or now, now) + delta * check.interval
            if new_tat > now:
                self._tats[check.key] = new_tat
            else:
                self._tats.pop(check.key, None)

    async def settle(
        self, reservation: ReservationCheck, checks: Sequence[Adjustable], deltas: Sequence[int]
    ) -> bool:
        return self.settle_now(reservation, checks, deltas)

    def settle_now(
        self, reservation: ReservationCheck, checks: Sequence[Adjustable], deltas: Sequence[int]
    ) -> bool:
        held = self._reservations.pop(reservation.member, None)
        if held is None:
            return False
        self.adjust_now(checks, deltas, at=held[1])
        return True

    async def reap(self, limit: int = 1000) -> list[str]:
        now = self._clock()
        due = [m for m, (deadline, _) in self._reservations.items() if deadline <= now][:limit]
        for member in due:
            del self._reservations[member]
        return due

    async def release(self, leases: Sequence[LeaseCheck]) -> None:
        for lease in leases:
            held = self._leases.get(lease.key)
            if held is not None:
                held.pop(lease.lease_id, None)

    async def put_if_absent(self, key: str, value: bytes, ttl: float) -> bytes | None:
        held = self._values.get(key)
        if held is not None and held[1] > self._clock():
            return held[0]
        await self.put(key, value, ttl)
        return None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if len(self._values) > 100_000:
            now = self._clock()
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._values[key] = (value, self._clock() + ttl)

    async def get(self, key: str) -> bytes | None:
        held = self._values.get(key)
        return held[0] if held is not None and held[1] > self._clock() else None

    async def swap(self, key: str, expected: bytes, value: bytes | None, ttl: float) -> bool:
        held = await self.get(key)
        if held is not None and held != expected:
            return False
        if value is None:
            self._values.pop(key, None)
        else:
            await self.put(key, value, ttl)
        return True

    def _maybe_sweep(self, now: float) -> None:
        self._until_sweep -= 1
        if self._until_sweep > 0:
            return
        self._until_sweep = _SWEEP_EVERY
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
        self._leases = {k: held for k, held in self._leases.items() if held}
        self._logs = {
            k: log for k, log in self._logs.items() if log[-1] > now - self._log_windows[k]
        }
        self._log_windows = {k: self._log_windows[k] for k in self._logs}
        wall = self._wall()
        self._counters = {k: held for k, held in self._counters.items() if held[2] > wall}

    def peek(self, key: str) -> float | None:
        """The stored TAT of ``key`` (for inspection and tests)."""
        return self._tats.get(key)

    async def start(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._tats.clear()
        self._leases.clear()
        self._logs.clear()
        self._counters.clear()
        self._reservations.clear()
        self._values.clear()
