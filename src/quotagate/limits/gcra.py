"""GCRA (generic cell rate algorithm): a token bucket kept as one timestamp.

A limit of ``amount`` per ``period`` with a bucket of ``capacity`` units refills one
unit every ``interval = period / amount`` seconds. The state is the theoretical
arrival time (TAT): the instant at which the bucket would be full again. Pure
functions over plain numbers so every store (memory, the Redis Lua script) computes
exactly the same thing; stores own the atomicity, never the arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# Float slack: a request arriving at exactly its allowed instant is admitted.
_EPSILON = 1e-9


class GcraResult(NamedTuple):
    allowed: bool
    new_tat: float  # the state to store when the whole admission succeeds
    remaining: int  # units still available after this request (before, if denied)
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until this request would fit (0 when allowed)


def gcra_step(tat: float, now: float, interval: float, capacity: int, cost: int) -> GcraResult:
    """Decide one request of ``cost`` units against a bucket whose state is ``tat``."""
    base = tat if tat > now else now
    new_tat = base + cost * interval
    allow_at = new_tat - capacity * interval
    if allow_at - now > _EPSILON:
        remaining = _remaining(base, now, interval, capacity)
        return GcraResult(False, tat, remaining, base - now, allow_at - now)
    remaining = _remaining(new_tat, now, interval, capacity)
    return GcraResult(True, new_tat, remaining, new_tat - now, 0.0)


def _remaining(tat: float, now: float, interval: float, capacity: int) -> int:
    free = capacity * interval - (tat - now)
    return max(0, min(capacity, math.floor(free / interval + _EPSILON)))
