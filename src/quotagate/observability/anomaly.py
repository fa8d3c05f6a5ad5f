"""Spend anomalies: a tenant spending far faster than its own baseline.

Per tenant, two exponentially weighted spend rates fed by every settled request: a
recent one (time constant ``window``) and a baseline (``baseline``). A request adds
``cost / τ`` to each after decaying it by ``exp(-Δt / τ)``, so under a steady rate
both converge to that rate, and a burst moves the recent one long before the
baseline. O(1) per request, a few floats per tenant, no store call.

Each instance judges the traffic it sees. Behind a load balancer every instance sees
the same mix, so the ratio of the two rates (what is judged) does not depend on how
many instances there are; ``min_spend`` applies to one instance's share of a tenant's
spend. The action (an alert, a throttle) is claimed once per tenant per cooldown
across instances by the caller.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from quotagate.auth.principal import Principal
from quotagate.config.observability import SpendAnomalyConfig

_MAX_TENANTS = 100_000


@dataclass(slots=True)
class _Rates:
    first: float
    at: float
    recent: float = 0.0  # micro-units per second
    baseline: float = 0.0
    flagged: bool = False


@dataclass(frozen=True, slots=True)
class Anomaly:
    tenant_id: str
    tenant_name: str
    plan: str
    recent_per_hour: float  # currency units
    baseline_per_hour: float
    ratio: float


class SpendAnomalies:
    def __init__(
        self,
        config: SpendAnomalyConfig,
        on_anomaly: Callable[[Anomaly], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = config.window
        self._baseline = config.baseline
        self._warmup = config.warmup if config.warmup is not None else config.baseline
        self._threshold = config.threshold
        self._min_rate = config.min_spend * 1_000_000 / config.window  # micros per second
        self._on_anomaly = on_anomaly
        self._clock = clock
        self._tenants: dict[str, _Rates] = {}

    def observe(self, principal: Principal, micros: int) -> None:
        tenant_id = principal.tenant_id
        now = self._clock()
        rates = self._tenants.get(tenant_id)
        if rates is None:
            if len(self._tenants) >= _MAX_TENANTS:
                self._tenants.clear()
            rates = self._tenants[tenant_id] = _Rates(now, now)
        elapsed = max(0.0, now - rates.at)
        rates.recent = rates.recent * math.exp(-elapsed / self._window) + micros / self._window
        rates.baseline = (
            rates.baseline * math.exp(-elapsed / self._baseline) + micros / self._baseline
        )
        rates.at = now
        if now - rates.first < self._warmup:
            return
        anomalous = (
            rates.recent > self._threshold * rates.baseline and rates.recent >= self._min_rate
        )
        if anomalous and not rates.flagged:
            rates.flagged = True
            ratio = rates.recent / rates.baseline if rates.baseline else math.inf
            per_hour = 3600 / 1_000_000
            found = Anomaly(
                tenant_id, principal.tenant_name, principal.plan,
                rates.recent * per_hour, rates.baseline * per_hour, ratio,
            )  # fmt: skip
            self._on_anomaly(found)
        elif rates.flagged and rates.recent < self._threshold * rates.baseline / 2:
            rates.flagged = False  # back to normal: the next burst is a new episode
