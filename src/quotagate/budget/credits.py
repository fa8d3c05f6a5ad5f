"""Turning an operator's credit request (CLI, admin API) into a stored amount."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from quotagate.budget.pricing import format_money
from quotagate.config.durations import parse_duration
from quotagate.limits.quotas import to_micros

if TYPE_CHECKING:
    from quotagate.db.repo import CreditRow

KINDS = ("topup", "burst", "override")
# A tenant's temporary rate-limit raise is an "override" credit on resource "rate",
# its factor in thousandths (2.5x → 2500).
RATE_PERMILLE = 1000
MAX_RATE_FACTOR = 100.0
MAX_BUDGET = 10**9  # in the currency (the CLI and the admin API alike)
MAX_TOKENS = 10**15


def credit_request(
    kind: str, budget: float | None, tokens: int | None, expires: str | None
) -> tuple[str, int, datetime | None]:
    """``(resource, amount, expires_at)``; ValueError names what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if (budget is None) == (tokens is None):
        raise ValueError("give exactly one of --budget or --tokens")
    if budget is not None and not (math.isfinite(budget) and budget <= MAX_BUDGET):
        raise ValueError(f"the budget amount must be a number up to {MAX_BUDGET}")
    if tokens is not None and tokens > MAX_TOKENS:
        raise ValueError(f"the token amount must be at most {MAX_TOKENS}")
    amount = to_micros(budget) if budget is not None else int(tokens or 0)
    if amount < 0 or (amount == 0 and kind != "override"):
        raise ValueError("the amount must be positive")
    if kind == "burst" and expires is None:
        raise ValueError("a burst credit expires: give --expires")
    now = datetime.now(UTC)
    ends = expiry(expires, now)
    if ends is not None and ends <= now:
        raise ValueError(f"the expiry {expires!r} has already passed")
    return ("budget" if budget is not None else "tokens"), amount, ends


def expiry(value: str | None, now: datetime | None = None) -> datetime | None:
    """A duration from ``now`` (``30d``) or an ISO date/time (naive: UTC), in UTC."""
    if value is None:
        return None
    try:
        return _instant(value, now or datetime.now(UTC))
    except OverflowError:  # past the calendar's range: the caller's ValueError (exit 2, 422)
        raise ValueError(f"the expiry {value!r} is out of range") from None


def _instant(value: str, now: datetime) -> datetime:
    try:
        return now + timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    at = datetime.fromisoformat(value)
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def credit_json(credit: CreditRow) -> dict[str, Any]:
    amount = (
        format_money(credit.amount)
        if credit.resource == "budget"
        else f"x{credit.amount / RATE_PERMILLE:g}"
        if credit.resource == "rate"
        else str(credit.amount)
    )
    expires = credit.expires_at.isoformat() if credit.expires_at else None
    return {
        "id": credit.id, "tenant_id": credit.tenant_id, "kind": credit.kind,
        "resource": credit.resource, "amount": amount, "expires_at": expires, "note": credit.note,
    }  # fmt: skip
