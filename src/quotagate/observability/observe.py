"""``observe``: the last step of every request: metrics, access log, trace span.

The runner calls ``start`` before the first stage and ``finish`` once the request has
ended and been settled. What is on (access log, tenant series, tracing) is decided
once at start-up from the policy's ``observability`` section; what is off costs a
``None`` check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from quotagate.config.observability import ObservabilityConfig
from quotagate.observability.access_log import AccessLog, access_record
from quotagate.observability.anomaly import SpendAnomalies
from quotagate.observability.metrics import (
    PROMPT_ESTIMATE_RATIO,
    decision_label,
    model_series,
    overhead_timer,
    request_counter,
    request_timer,
)
from quotagate.observability.tenants import TenantSeries
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Stage


class Tracer(Protocol):
    """What the optional tracing module provides (``observability.tracing``)."""

    def start(self, ctx: RequestContext) -> None: ...

    def finish(self, ctx: RequestContext, settle_started: float) -> None: ...

    def wrap(self, stages: Sequence[Stage]) -> list[Stage]: ...

    def close(self) -> None: ...


class Observer:
    def __init__(
        self,
        access_log: AccessLog | None = None,
        tenants: TenantSeries | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.access_log = access_log
        self.tenants = tenants
        self.tracer = tracer
        self.metrics = True  # per-request series (observability.metrics.enabled)
        self.anomalies: SpendAnomalies | None = None  # set by the gateway when enabled

    def start(self, ctx: RequestContext) -> None:
        if self.tracer is not None:
            self.tracer.start(ctx)

    def finish(
        self,
        ctx: RequestContext,
        started: float,
        ended: float,
        charged: tuple[int, int],
        micros: int,
    ) -> None:
        """``started``: the request's start; ``ended``: its response's end (settlement
        ran from then until now); ``charged``/``micros``: the prompt and completion
        tokens and the money it was charged."""
        if self.metrics:
            endpoint = ctx.endpoint.name
            model = ctx.model if ctx.target is not None else "unknown"
            request_counter(endpoint, model, ctx.status, ctx.decision).inc()
            request_timer(endpoint).observe(ended - started)
            if ctx.target is not None:
                self._model_metrics(ctx, model, started, ended, charged, micros)
        if self.tenants is not None and ctx.principal is not None:
            decision = decision_label(ctx.decision)
            cost = micros / 1_000_000
            self.tenants.count(ctx.principal.tenant_name, decision, *charged, cost)
        if self.anomalies is not None and ctx.principal is not None and micros > 0:
            self.anomalies.observe(ctx.principal, micros)
        if self.access_log is not None:
            self.access_log.write(access_record(ctx, started, ended, charged, micros))
        if self.tracer is not None:
            self.tracer.finish(ctx, ended)

    @staticmethod
    def _model_metrics(
        ctx: RequestContext,
        model: str,
        started: float,
        ended: float,
        charged: tuple[int, int],
        micros: int,
    ) -> None:
        upstream, first_token, prompt, completion, cost = model_series(model)
        if ctx.upstream_started:
            upstream_time = ctx.upstream_ended - ctx.upstream_started
            upstream.observe(upstream_time)
            overhead_timer(ctx.endpoint.name).observe(max(0.0, ended - started - upstream_time))
            if ctx.stream and ctx.first_token:
                first_token.observe(ctx.first_token - ctx.upstream_started)
        if charged[0]:
            prompt.inc(charged[0])
        if charged[1]:
            completion.inc(charged[1])
        if micros:
            cost.inc(micros / 1_000_000)
        usage = ctx.usage
        if usage is not None and usage.prompt > 0 and ctx.prompt_estimate:
            PROMPT_ESTIMATE_RATIO.observe(ctx.prompt_estimate / usage.prompt)

    def wrap(self, stages: Sequence[Stage]) -> list[Stage]:
        """The stages, each in a span when tracing is on."""
        return self.tracer.wrap(stages) if self.tracer is not None else list(stages)

    def start_flushing(self) -> None:
        if self.access_log is not None:
            self.access_log.start()

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()


METRICS_ONLY = Observer()


def build_observer(config: ObservabilityConfig) -> Observer:
    access = config.access_log
    access_log = AccessLog.open(access.path, access.flush_interval) if access.enabled else None
    tenants = TenantSeries(config.metrics.max_tenants) if config.metrics.tenant_labels else None
    tracer: Tracer | None = None
    if config.tracing.enabled:
        from quotagate.observability.tracing import OtelTracer  # the optional extra

        tracer = OtelTracer.from_environment()
    observer = Observer(access_log, tenants, tracer)
    observer.metrics = config.metrics.enabled
    return observer
