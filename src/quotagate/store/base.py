"""The limit store contract: what an algorithm may ask of a store.

A store decides a batch of counter checks atomically: all of them are consumed or
none is, on one clock (the Redis server's, for the Redis store). The in-process
``MemoryStore`` is the embedded default; ``RedisStore`` implements the same protocol
with the same semantics, and one test body runs against both.

Errors: a store that cannot answer raises ``StoreUnavailable``; what that means for
each limit (open, closed, local) is the limits engine's decision, not the store's.
The value types are NamedTuples: immutable and built by one tuple allocation (frozen
dataclasses set each field through object.__setattr__, measurably dearer per request).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class StoreUnavailable(Exception):
    """The store did not answer (down, frozen, timed out, or its circuit is open)."""


class RateCheck(NamedTuple):
    """One GCRA counter a request touches."""

    key: str
    interval: float  # seconds per unit
    capacity: int  # bucket size in units (the burst)
    cost: int  # units this request takes


class LeaseCheck(NamedTuple):
    """One concurrency slot: held until released or until ``ttl`` passes."""

    key: str
    limit: int
    lease_id: str
    ttl: float  # seconds: a lease whose gateway died frees itself after this


class WindowCheck(NamedTuple):
    """A sliding-window log: at most ``limit`` requests in any ``window`` seconds."""

    key: str
    limit: int
    window: float
    entry_id: str  # unique per request: the log's member


class CounterCheck(NamedTuple):
    """A counter that resets at window boundaries: fixed windows of ``window`` seconds
    aligned on the store's clock, or calendar periods (``window`` 0) whose bounds the
    gateway computed: ``[start, end)``, the next one ``[end, next_end)`` and the one
    before, from ``prev_start`` (0: as long as this one). The store charges the period
    that holds its own clock's now, so a gateway a little off across midnight counts
    into the store's period."""

    key: str
    limit: int
    cost: int
    window: float = 0.0
    start: float = 0.0
    end: float = 0.0
    next_end: float = 0.0
    prev_start: float = 0.0

    def calendar(self) -> tuple[float, float, float, float]:
        """``(prev_start, start, end, next_end)``."""
        prev = self.prev_start or self.start - (self.end - self.start)
        return prev, self.start, self.end, self.next_end

    def period_at(self, at: float) -> tuple[float, float]:
        """``[start, end)`` of the calendar period holding ``at``."""
        prev, start, end, next_end = self.calendar()
        if at < start:
            return prev, start
        return (end, next_end) if at >= end else (start, end)


class ReservationCheck(NamedTuple):
    """Not a limit: the record of what a request reserved, kept until it settles. One
    its gateway never settles (killed) is reaped by any instance after ``ttl``."""

    key: str
    member: str  # unique per request; carries what the ledger needs (JSON)
    ttl: float


Check = RateCheck | LeaseCheck | WindowCheck | CounterCheck | ReservationCheck
Adjustable = RateCheck | CounterCheck


class CheckOutcome(NamedTuple):
    remaining: int
    reset_after: float
    retry_after: float


class Admission(NamedTuple):
    allowed: bool
    outcomes: tuple[CheckOutcome, ...]
    denied: int = -1  # index of the first check that denied, -1 when allowed


class LimitStore(Protocol):
    async def acquire(self, checks: Sequence[Check]) -> Admission:
        """Consume every check, or none of them if any one denies."""
        ...

    async def adjust(self, checks: Sequence[Adjustable], deltas: Sequence[int]) -> None:
        """Charge (positive) or refund (negative) units on counters already consumed."""
        ...

    async def settle(
        self, reservation: ReservationCheck, checks: Sequence[Adjustable], deltas: Sequence[int]
    ) -> bool:
        """Remove the reservation and apply the deltas, atomically per slot; nothing is
        applied (False) when the reservation was reaped already."""
        ...

    async def reap(self, limit: int = 1000) -> list[str]:
        """Take (remove and return) up to ``limit`` reservations past their deadline."""
        ...

    async def release(self, leases: Sequence[LeaseCheck]) -> None: ...

    async def put_if_absent(self, key: str, value: bytes, ttl: float) -> bytes | None:
        """Set ``key`` unless it exists; returns the existing value, or None if set."""
        ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def swap(self, key: str, expected: bytes, value: bytes | None, ttl: float) -> bool:
        """Replace ``key`` by ``value`` (delete it when None) unless it holds a value
        other than ``expected`` (then False); a missing or expired key is replaced."""
        ...

    async def start(self) -> None:
        """Prepare before traffic; raises ``StoreUnavailable`` if the store is down."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
