"""Rate-limit response headers.

- IETF draft-ietf-httpapi-ratelimit-headers-10: ``RateLimit-Policy`` lists every policy
  that applied (``"name";q=<quota>;w=<window s>``) and ``RateLimit`` its current state
  (``"name";r=<remaining>;t=<seconds to reset>``).
- OpenAI's ``x-ratelimit-{limit,remaining,reset}-requests`` for the most constraining
  request limit, resets written as Go durations (``6s``, ``1m0s``).
- ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms`` on a 429.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from quotagate.config.durations import format_go_duration
from quotagate.limits.policy import CompiledLimit
from quotagate.store.base import Admission

Headers = list[tuple[bytes, bytes]]


def policy_header(limits: Sequence[CompiledLimit]) -> bytes:
    """The static ``RateLimit-Policy`` value: computed once per plan."""
    return ", ".join(limit.policy_item for limit in limits).encode()


def rate_limit_headers(
    limits: Sequence[CompiledLimit], admission: Admission, policy_value: bytes
) -> Headers:
    if not limits:
        return []
    state = ", ".join(
        f'"{limit.name}";r={o.remaining};t={math.ceil(o.reset_after)}'
        for limit, o in zip(limits, admission.outcomes, strict=True)
    )
    headers: Headers = [(b"ratelimit-policy", policy_value), (b"ratelimit", state.encode())]
    rates = [i for i, limit in enumerate(limits) if limit.unit == "requests"]
    if rates:
        tightest = min(rates, key=lambda i: admission.outcomes[i].remaining)
        limit, outcome = limits[tightest], admission.outcomes[tightest]
        headers += [
            (b"x-ratelimit-limit-requests", str(limit.amount).encode()),
            (b"x-ratelimit-remaining-requests", str(outcome.remaining).encode()),
            (b"x-ratelimit-reset-requests", format_go_duration(outcome.reset_after).encode()),
        ]
    if not admission.allowed:
        retry = admission.outcomes[admission.denied].retry_after
        headers.append((b"retry-after", str(max(1, math.ceil(retry))).encode()))
        headers.append((b"retry-after-ms", str(max(1, math.ceil(retry * 1000))).encode()))
    return headers
