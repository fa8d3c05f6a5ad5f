"""Rate-limit response headers.

- IETF draft-ietf-httpapi-ratelimit-headers-10: ``RateLimit-Policy`` lists every policy
  that applied (``"name";q=<quota>;w=<window s>``) and ``RateLimit`` its current state
  (``"name";r=<remaining>;t=<seconds to reset>``).
- OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the most
  constraining request and token limit, resets written as Go durations (``6s``, ``1m0s``).
  Token limits carry ``qu="quotagate-tokens"`` in ``RateLimit-Policy``.
- ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms`` on a 429.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from quotagate.config.durations import format_go_duration
from quotagate.limits.policy import CompiledLimit
from quotagate.store.base import CheckOutcome

Headers = list[tuple[bytes, bytes]]
_NAMES = {
    unit: tuple(f"x-ratelimit-{what}-{unit}".encode() for what in ("limit", "remaining", "reset"))
    for unit in ("requests", "tokens")
}


def _openai_headers(unit: str, amount: int, outcome: CheckOutcome) -> Headers:
    limit, remaining, reset = _NAMES[unit]
    return [
        (limit, str(amount).encode()),
        (remaining, str(outcome.remaining).encode()),
        (reset, format_go_duration(outcome.reset_after).encode()),
    ]


def policy_header(limits: Sequence[CompiledLimit]) -> bytes:
    """The static ``RateLimit-Policy`` value: computed once per plan."""
    return ", ".join(limit.policy_item for limit in limits).encode()


def rate_limit_headers(
    limits: Sequence[CompiledLimit],
    outcomes: Sequence[CheckOutcome],
    denied: int,
    policy_value: bytes,
    scale: float = 1.0,
) -> Headers:
    """Headers of the rate ``limits``; ``outcomes`` starts with theirs (quotas' may
    follow), ``denied`` is the refusing check's index (-1: admitted); ``scale``: the
    factor model pressure applies to the amounts now (``RateLimit-Policy`` keeps the
    plan's own, ``x-quotagate-limit-factor`` says the factor)."""
    if not limits:
        return []
    state = ", ".join(
        f'"{limit.name}";r={o.remaining};t={math.ceil(o.reset_after)}'
        for limit, o in zip(limits, outcomes, strict=False)
    )
    headers: Headers = [(b"ratelimit-policy", policy_value), (b"ratelimit", state.encode())]
    for unit in ("requests", "tokens"):
        of_unit = [i for i, limit in enumerate(limits) if limit.unit == unit]
        if of_unit:
            tightest = min(of_unit, key=lambda i: outcomes[i].remaining)
            amount = limits[tightest].amount
            if scale != 1.0:
                amount = max(1, round(amount * scale))
            headers += _openai_headers(unit, amount, outcomes[tightest])
    if 0 <= denied < len(limits):
        retry = outcomes[denied].retry_after
        headers.append((b"retry-after", str(max(1, math.ceil(retry))).encode()))
        headers.append((b"retry-after-ms", str(max(1, math.ceil(retry * 1000))).encode()))
    return headers
