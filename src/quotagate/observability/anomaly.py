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

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from quotagate.auth.invalidation import Invalidation, Stale
from quotagate.auth.principal import Principal
from quotagate.budget.alerts import SpendAlert
from quotagate.budget.credits import RATE_PERMILLE
from quotagate.config.observability import SpendAnomalyConfig
from quotagate.observability.metrics import SPEND_ANOMALIES
from quotagate.store.base import StoreUnavailable

if TYPE_CHECKING:
    from quotagate.admin.repo import AdminRepo
    from quotagate.budget.thresholds import QuotaAlerts
    from quotagate.limits.engine import LimitEngine
    from quotagate.pipeline.stage import PolicySource

log = logging.getLogger(__name__)

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


class AnomalyResponse:
    """What the gateway does about an anomaly: once per tenant per cooldown across
    instances (claimed in the store), log, count, throttle if so configured (a rate
    override every instance applies), and send the signed webhook."""

    def __init__(
        self,
        config: SpendAnomalyConfig,
        engine: LimitEngine,
        repo: AdminRepo,
        invalidation: Invalidation,
        alerts: QuotaAlerts,
        policy: PolicySource,
    ) -> None:
        self._config, self._engine, self._repo = config, engine, repo
        self._invalidation, self._alerts, self._policy = invalidation, alerts, policy
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, anomaly: Anomaly) -> None:
        task = asyncio.get_running_loop().create_task(self._respond(anomaly))
        self._tasks.add(task)  # the loop holds only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _respond(self, anomaly: Anomaly) -> None:
        try:
            claimed = await self._engine.put_if_absent(
                f"an:{{t:{anomaly.tenant_id}}}", b"1", self._config.cooldown
            )
        except StoreUnavailable:
            claimed = None  # an alert twice beats none
        if claimed is not None:
            return
        SPEND_ANOMALIES.inc()
        log.warning(
            "spend anomaly: tenant %s spends %.4f an hour against a baseline of %.4f (x%.1f)",
            anomaly.tenant_name, anomaly.recent_per_hour, anomaly.baseline_per_hour, anomaly.ratio,
        )  # fmt: skip
        factor = self._config.throttle
        throttled = await self._throttle(anomaly, factor) if factor else None
        sender = self._alerts.sender
        if sender is None:
            return
        plan = self._policy.snapshot.plans.get(anomaly.plan)
        sender.send(
            SpendAlert(
                alert_id=secrets.token_hex(16),
                tenant_id=anomaly.tenant_id,
                tenant_name=anomaly.tenant_name,
                recent_per_hour=anomaly.recent_per_hour,
                baseline_per_hour=anomaly.baseline_per_hour,
                ratio=anomaly.ratio,
                throttled_to=throttled,
                currency=plan.currency if plan else "USD",
                at=datetime.now(UTC),
            )
        )

    async def _throttle(self, anomaly: Anomaly, factor: float) -> float | None:
        try:
            await self._repo.add_credit(
                "anomaly-detector", anomaly.tenant_name, "override", "rate",
                round(factor * RATE_PERMILLE), None, f"spend anomaly x{anomaly.ratio:.1f}",
                "rate.throttle",
            )  # fmt: skip
        except Exception as exc:  # the tenant may exist only at its IdP; the driver's errors vary
            log.warning("could not throttle tenant %s: %s", anomaly.tenant_name, type(exc).__name__)
            return None
        await self._invalidation.publish(Stale(tenants=(anomaly.tenant_name,)))
        return factor
