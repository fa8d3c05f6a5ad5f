"""What a client is told about its quotas and budget, before and at exhaustion.

On every response under a quota: what remains and when it resets
(``x-quotagate-quota-{limit,remaining,reset}-{tokens,requests}``,
``x-quotagate-budget-{limit,remaining,reset}`` in the currency, 6 decimals), and one
``x-quotagate-quota-warning`` per quota past one of its alert thresholds. Amounts
count this request's reservation (what it may still use), so they never overstate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

from quotagate.budget.pricing import format_money
from quotagate.limits.policy import CompiledLimit
from quotagate.store.base import Check, CheckOutcome, CounterCheck

Headers = list[tuple[bytes, bytes]]


def reset_time(reset_after: float) -> str:
    return _iso(round(time.time() + reset_after))


@lru_cache(maxsize=1024)
def _iso(epoch: int) -> str:
    # Cached: a quota resets at its period's end, the same instant for a whole period;
    # formatting it per request was 2.1% of the gateway's samples (bench/profile.py
    # --accounting budget).
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _amount(unit: str, value: int) -> str:
    return format_money(value) if unit == "micros" else str(value)


@lru_cache(maxsize=4096)
def _amount_bytes(unit: str, value: int) -> bytes:
    return _amount(unit, value).encode()  # a quota's limit: the same for every request


@lru_cache(maxsize=1024)
def _iso_bytes(epoch: int) -> bytes:
    return _iso(epoch).encode()


_WHAT = ("limit", "remaining", "reset")


class QuotaGroup(NamedTuple):
    """The quotas of one unit, whose tightest speaks for them in the headers."""

    unit: str
    names: tuple[bytes, bytes, bytes]  # the limit, remaining and reset headers
    members: tuple[int, ...]  # positions in the request's checks


def _names(unit: str) -> tuple[bytes, bytes, bytes]:
    head = "x-quotagate-budget" if unit == "micros" else "x-quotagate-quota"
    tail = "" if unit == "micros" else f"-{unit}"
    limit, remaining, reset = (f"{head}-{what}{tail}".encode() for what in _WHAT)
    return limit, remaining, reset


def quota_groups(quotas: Sequence[CompiledLimit], first: int) -> tuple[QuotaGroup, ...]:
    """The quotas (at positions ``first`` on in a request's checks) by unit, units in
    order of first appearance: worked out once per plan, for ``quota_headers``."""
    units: dict[str, list[int]] = {}
    for i, limit in enumerate(quotas, first):
        units.setdefault(limit.unit, []).append(i)
    return tuple(QuotaGroup(unit, _names(unit), tuple(at)) for unit, at in units.items())


def quota_headers(
    groups: Sequence[QuotaGroup], checks: Sequence[Check], outcomes: Sequence[CheckOutcome]
) -> Headers:
    """The tightest quota of each unit in ``groups`` (``quota_groups``) speaks for it."""
    headers: Headers = []
    now = time.time()
    for unit, (limit_name, remaining_name, reset_name), members in groups:
        i = members[0]
        if len(members) > 1:
            i = min(members, key=lambda j: outcomes[j].remaining)
        outcome = outcomes[i]
        check: CounterCheck = checks[i]  # type: ignore[assignment]
        headers += (
            (limit_name, _amount_bytes(unit, check.limit)),
            (remaining_name, _amount(unit, outcome.remaining).encode()),
            (reset_name, _iso_bytes(round(now + outcome.reset_after))),
        )
    return headers


def crossed(limit: CompiledLimit, check: CounterCheck, outcome: CheckOutcome) -> float | None:
    """The highest alert threshold this quota's use has reached, if any."""
    if not limit.alerts or check.limit <= 0:
        return None
    used = (check.limit - outcome.remaining) / check.limit
    if used < limit.alerts[0]:  # sorted: below the lowest, below them all
        return None
    return [t for t in limit.alerts if used >= t][-1]


def warning(limit: CompiledLimit, check: CounterCheck, outcome: CheckOutcome, at: float) -> bytes:
    used = check.limit - outcome.remaining
    return (
        f'"{limit.name}"; used={used}; limit={check.limit}; unit={limit.unit}; '
        f"threshold={round(at * 100)}%; resets={reset_time(outcome.reset_after)}"
    ).encode()
