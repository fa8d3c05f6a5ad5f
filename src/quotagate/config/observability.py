"""The policy's ``observability`` section: access log, metric labels, tracing.

Kept apart from ``schema.py`` so the request-path policy and the operator's telemetry
settings change independently. These settings take effect when a process starts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from quotagate.config.durations import Duration


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AccessLogConfig(_Frozen):
    # One JSON line per request. On by default, like nginx's and uvicorn's access logs:
    # an operator expects to see traffic without configuring anything.
    enabled: bool = True
    # "-" is standard output (what a container's log driver collects); else a file,
    # opened for appending (rotate it with copytruncate or a restart).
    path: str = "-"
    # Lines are buffered in memory and written whole at most this long after the request.
    flush_interval: Duration = 1.0


class MetricsConfig(_Frozen):
    # Per-request series of the proxied endpoints (requests, durations, upstream and
    # token metrics). Off only when something else counts requests (or to measure what
    # they cost: bench/modes.py); /metrics still serves the rest (limits, store, ledger,
    # health probes).
    enabled: bool = True
    # /metrics is always on the admin listener; also on the public one unless this is
    # false (keep it off where clients reach the gateway directly).
    public: bool = True
    # Per-tenant series (requests, tokens, cost): off by default, since a label per
    # tenant multiplies series. At most `max_tenants` distinct tenants per process get
    # their own label; the rest are counted as "other".
    tenant_labels: bool = False
    max_tenants: int = Field(default=100, ge=1, le=10_000)


class TracingConfig(_Frozen):
    # OpenTelemetry spans (needs `pip install quotagate[otel]`). When off, nothing of
    # OpenTelemetry is imported. Export is configured by the standard OTEL_* variables.
    enabled: bool = False


class SpendAnomalyConfig(_Frozen):
    """A tenant spending much faster than its own recent history: an alert webhook
    (accounting.alerts) and, optionally, a throttle until an admin clears it."""

    enabled: bool = False
    # The recent spend rate is averaged over about `window`, the baseline over about
    # `baseline` (exponentially weighted); a tenant is judged once it has `warmup` of
    # history (default: the baseline).
    window: Duration = 300.0
    baseline: Duration = 21600.0
    warmup: Duration | None = None
    # Anomalous: recent rate > threshold x baseline rate, and at least `min_spend`
    # (currency units) spent in a window at that rate.
    threshold: float = Field(default=4.0, gt=1.0)
    min_spend: float = Field(default=1.0, ge=0)
    # At most one alert per tenant per cooldown, across instances.
    cooldown: Duration = 3600.0
    # Multiply the tenant's rate limits by this (0.1 = a tenth) until an admin clears it
    # (POST /admin/v1/rate-raises/clear); none: alert only.
    throttle: float | None = Field(default=None, gt=0.0, lt=1.0)


class ObservabilityConfig(_Frozen):
    access_log: AccessLogConfig = AccessLogConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    spend_anomaly: SpendAnomalyConfig = SpendAnomalyConfig()
