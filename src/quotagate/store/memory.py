"""In-process limit store: the embedded default, exact within one process.

Atomic because a batch is decided without an ``await`` on the single event-loop
thread. Uses a monotonic clock (injected for tests) so wall-clock jumps change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from quotagate.limits.gcra import gcra_step
from quotagate.store.base import Admission, CheckOutcome, RateCheck

# Sweep full (expired) buckets every this many acquisitions: amortised O(1), keeps
# memory bounded by the number of keys active within one refill period.
_SWEEP_EVERY = 10_000


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._until_sweep = _SWEEP_EVERY

    async def acquire(self, checks: Sequence[RateCheck]) -> Admission:
        return self.acquire_now(checks)

    def acquire_now(self, checks: Sequence[RateCheck]) -> Admission:
        now = self._clock()
        tats = self._tats
        results = [
            gcra_step(tats.get(c.key, now), now, c.interval, c.capacity, c.cost) for c in checks
        ]
        outcomes = tuple(CheckOutcome(r.remaining, r.reset_after, r.retry_after) for r in results)
        for index, result in enumerate(results):
            if not result.allowed:
                return Admission(False, outcomes, index)
        for check, result in zip(checks, results, strict=True):
            tats[check.key] = result.new_tat
        self._maybe_sweep(now)
        return Admission(True, outcomes)

    def _maybe_sweep(self, now: float) -> None:
        self._until_sweep -= 1
        if self._until_sweep > 0:
            return
        self._until_sweep = _SWEEP_EVERY
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now}

    def peek(self, key: str) -> float | None:
        """The stored TAT of ``key`` (for inspection and tests)."""
        return self._tats.get(key)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._tats.clear()
