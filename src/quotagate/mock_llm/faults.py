"""Which fault, if any, a request gets: its directives first, then the random rates."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from .directives import Directives
from .settings import MockSettings


class Fault(enum.Enum):
    NONE = "none"
    ERROR = "error"
    HANG = "hang"
    DROP = "drop"


@dataclass(slots=True, frozen=True)
class FaultPlan:
    """The fault chosen for one request; ``status``/``retry_after`` only for errors."""

    fault: Fault
    status: int = 0
    retry_after: str | None = None


NO_FAULT = FaultPlan(Fault.NONE)
HANG = FaultPlan(Fault.HANG)
DROP = FaultPlan(Fault.DROP)


OVERLOADED = FaultPlan(Fault.ERROR, 503, "1")


def overloaded(settings: MockSettings, in_flight: int, rng: random.Random) -> bool:
    """Past twice its capacity the load model refuses a growing share of requests."""
    limit = 2 * settings.capacity
    return settings.capacity > 0 and in_flight > limit and rng.random() > limit / in_flight


def choose_fault(directives: Directives, settings: MockSettings, rng: random.Random) -> FaultPlan:
    """A directive always wins; otherwise each non-zero rate is drawn in a fixed order."""
    if directives.hang:
        return HANG
    if directives.error_status is not None:
        return FaultPlan(Fault.ERROR, directives.error_status, directives.retry_after)
    if directives.drop:
        return DROP
    if settings.fail_next > 0:
        settings.fail_next -= 1
        retry_after = f"{settings.retry_after:g}" if settings.retry_after > 0 else None
        return FaultPlan(Fault.ERROR, settings.error_status, retry_after)
    return _draw(settings, rng)


def _draw(settings: MockSettings, rng: random.Random) -> FaultPlan:
    # Zero rates draw nothing, so a seeded run's sequence depends only on the rates in use.
    if settings.error_rate > 0 and rng.random() < settings.error_rate:
        return FaultPlan(Fault.ERROR, settings.error_status)
    if settings.hang_rate > 0 and rng.random() < settings.hang_rate:
        return HANG
    if settings.drop_rate > 0 and rng.random() < settings.drop_rate:
        return DROP
    return NO_FAULT


@dataclass(slots=True)
class MockStats:
    """Counters over ``/v1`` requests, served by ``GET /_mock/stats``.

    ``errors`` counts every ``/v1`` answer with status >= 400, injected or not.
    """

    requests: int = 0
    errors: int = 0
    hangs: int = 0
    drops: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0  # the most /v1 requests in flight at once since start
