"""Per-tenant metric series, opt-in and capped.

A label per tenant multiplies series, so the first ``max_tenants`` tenants a process
sees get their own label and later ones are counted as ``other``. The cap is per
process: with N workers, up to N times max_tenants distinct labels in the worst case.
"""

from __future__ import annotations

from typing import Any

from quotagate.observability.metrics import TENANT_COST, TENANT_REQUESTS, TENANT_TOKENS

OTHER = "other"


class _Series:
    """One tenant label's children, looked up once (``labels()`` takes a lock and
    builds a key tuple on every call: metrics.py measured 2.0 → 0.4 µs an increment)."""

    __slots__ = ("completion", "cost", "decisions", "name", "prompt")

    def __init__(self, name: str) -> None:
        self.name = name
        self.prompt = TENANT_TOKENS.labels(name, "prompt")
        self.completion = TENANT_TOKENS.labels(name, "completion")
        self.cost = TENANT_COST.labels(name)
        self.decisions: dict[str, Any] = {}


class TenantSeries:
    def __init__(self, max_tenants: int) -> None:
        self._max = max_tenants
        self._series: dict[str, _Series] = {}  # the first max_tenants tenants
        self._other: _Series | None = None  # every later one

    def label(self, tenant: str) -> str:
        return self._of(tenant).name

    def _of(self, tenant: str) -> _Series:
        series = self._series.get(tenant)
        if series is not None:
            return series
        if len(self._series) < self._max:
            series = self._series[tenant] = _Series(tenant)
            return series
        if self._other is None:
            self._other = _Series(OTHER)
        return self._other

    def count(self, tenant: str, decision: str, prompt: int, completion: int, cost: float) -> None:
        series = self._of(tenant)
        requests = series.decisions.get(decision)
        if requests is None:
            requests = series.decisions[decision] = TENANT_REQUESTS.labels(series.name, decision)
        requests.inc()
        if prompt:
            series.prompt.inc(prompt)
        if completion:
            series.completion.inc(completion)
        if cost:
            series.cost.inc(cost)
