"""Global protection, before the costly work.

- ``admit_ip`` (``shaping.ip_guard``): a token bucket per client address (after
  trusted proxies), in this process, decided before any key lookup, signature check,
  body read or store call; a flood from one address costs a dict lookup per request.
- ``in_flight_cap`` (``shaping.max_in_flight``): proxied requests in flight in this
  process at most; beyond it, 503 at once. An emergency-bypass key is never refused.
"""

from __future__ import annotations

import math
import time

from quotagate.errors import IpRefused, Shed
from quotagate.observability.metrics import PREAUTH_REFUSED, SHED
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import PolicySource

_SWEEP_AT = 100_000  # addresses remembered before the idle ones are dropped


class AdmitIp:
    name = "admit_ip"

    def __init__(self, policy: PolicySource) -> None:
        self._policy = policy
        self._tats: dict[str, float] = {}  # GCRA: each address's theoretical arrival time
        self._sweep_at = _SWEEP_AT

    async def __call__(self, ctx: RequestContext) -> None:
        wait = self.refused_for(ctx.client_ip)
        if wait:
            raise IpRefused(
                "Too many requests from your address; retry after the Retry-After header.",
                headers=[(b"retry-after", str(wait).encode())],
            )

    def refused_for(self, client_ip: str) -> int:
        """Count a request from ``client_ip``: 0 when admitted, else the whole seconds to
        wait (the token endpoint answers that in its own shape)."""
        guard = self._policy.snapshot.policy.shaping.ip_guard
        if guard is None:
            return 0
        now = time.monotonic()
        interval = guard.per / guard.requests
        tolerance = interval * ((guard.burst or guard.requests) - 1)
        tats = self._tats
        tat = max(tats.get(client_ip, now), now)
        if tat - now > tolerance:
            PREAUTH_REFUSED.inc()
            return max(1, math.ceil(tat - now - tolerance))
        if len(tats) >= self._sweep_at:  # drop idle addresses, at most once per doubling
            self._tats = tats = {ip: t for ip, t in tats.items() if t > now}
            self._sweep_at = max(_SWEEP_AT, 2 * len(tats))
        tats[client_ip] = tat + interval
        return 0


class InFlightCap:
    name = "in_flight_cap"

    def __init__(self, policy: PolicySource) -> None:
        self._policy = policy
        self.in_flight = 0

    async def __call__(self, ctx: RequestContext) -> None:
        cap = self._policy.snapshot.policy.shaping.max_in_flight
        if cap is None:
            return
        if self.in_flight >= cap and not (ctx.principal is not None and ctx.principal.bypass):
            SHED.labels("in_flight_cap").inc()
            raise Shed("The gateway is at capacity; retry shortly.")
        self.in_flight += 1
        ctx.capped = True

    async def finish(self, ctx: RequestContext) -> None:
        if ctx.capped:
            self.in_flight -= 1
