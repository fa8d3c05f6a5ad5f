"""The limit store contract: what an algorithm may ask of a store.

A store decides a batch of counter checks atomically: all of them are consumed or
none is. The in-process ``MemoryStore`` is the embedded default; a Redis store with
the same semantics implements the same protocol. A store that lacks a capability
fails at start-up, not on the first request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, frozen=True)
class RateCheck:
    """One GCRA counter a request touches."""

    key: str
    interval: float  # seconds per unit
    capacity: int  # bucket size in units (the burst)
    cost: int  # units this request takes


@dataclass(slots=True, frozen=True)
class CheckOutcome:
    remaining: int
    reset_after: float
    retry_after: float


@dataclass(slots=True, frozen=True)
class Admission:
    allowed: bool
    outcomes: tuple[CheckOutcome, ...]
    denied: int = -1  # index of the first check that denied, -1 when allowed


class LimitStore(Protocol):
    async def acquire(self, checks: Sequence[RateCheck]) -> Admission:
        """Consume every check, or none of them if any one denies."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
