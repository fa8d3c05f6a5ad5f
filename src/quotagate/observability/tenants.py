"""Per-tenant metric series, opt-in and capped.

A label per tenant multiplies series, so the first ``max_tenants`` tenants a process
sees get their own label and later ones are counted as ``other``. The cap is per
process: with N workers, up to N times max_tenants distinct labels in the worst case.
"""

from __future__ import annotations

from typing import Any

from quotagate.observability.metrics import TENANT_COST, TENANT_REQUESTS, TENANT_TOKENS

OTHER = "other"


class TenantSeries:
    def __init__(self, max_tenants: int) -> None:
        self._max = max_tenants
        self._names: set[str] = set()
        self._series: dict[str, tuple[Any, Any, Any]] = {}  # by label

    def label(self, tenant: str) -> str:
        if tenant in self._names:
            return tenant
        if len(self._names) < self._max:
            self._names.add(tenant)
            return tenant
        return OTHER

    def count(self, tenant: str, decision: str, prompt: int, completion: int, cost: float) -> None:
        name = self.label(tenant)
        TENANT_REQUESTS.labels(name, decision).inc()
        if not (prompt or completion or cost):
            return
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = (
                TENANT_TOKENS.labels(name, "prompt"),
                TENANT_TOKENS.labels(name, "completion"),
                TENANT_COST.labels(name),
            )
        series[0].inc(prompt)
        series[1].inc(completion)
        series[2].inc(cost)
