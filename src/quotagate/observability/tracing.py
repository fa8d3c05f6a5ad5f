"""OpenTelemetry spans, one trace per request (the optional ``otel`` extra).

Imported only when the policy turns tracing on, so a gateway without it never loads
OpenTelemetry. A request gets a server span (a child of the client's W3C
``traceparent`` when it sent one) with child spans for ``authenticate``, ``limits``,
``upstream`` (a client span, with a ``gen_ai.first_token`` event for streams, whose
context is sent upstream as ``traceparent``) and ``settlement``. Attributes follow the
OpenTelemetry GenAI semantic conventions where they apply (``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ...).

Export is configured the standard way: ``OTEL_TRACES_EXPORTER`` (``otlp``, the
default, ``console`` or ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` and friends,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_SDK_DISABLED``. A process that already installed a tracer provider (an
embedding application, a test) keeps its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from quotagate.errors import GatewayError
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Stage

_PROPAGATOR = TraceContextTextMapPropagator()
# perf_counter seconds → epoch nanoseconds (span times of steps measured in the runner).
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()
# The stages that get a span of their own, and its name.
_SPANS = {"authenticate": "authenticate", "limit": "limits"}
_OPERATIONS = {"chat.completions": "chat", "completions": "text_completion"}


@lru_cache(maxsize=256)
def _host(base_url: str) -> str:
    """The upstream's host name (never the URL: it may carry credentials)."""
    return urlsplit(base_url).hostname or ""


def _ns(perf: float) -> int:
    return int(perf * 1e9) + _EPOCH_OFFSET_NS


def _operation(endpoint: str) -> str:
    return _OPERATIONS.get(endpoint, endpoint)


def provider_from_environment() -> TracerProvider:
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "quotagate"}))
    provider = TracerProvider(resource=resource)  # reads OTEL_TRACES_SAMPLER
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip()
        if name == "otlp":  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


class OtelTracer:
    def __init__(self, tracer: trace.Tracer, provider: TracerProvider | None = None) -> None:
        self._tracer = tracer
        self._owned = provider  # shut down (flushed) on close

    @classmethod
    def from_environment(cls) -> OtelTracer:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            return cls(current.get_tracer("quotagate"))
        provider = provider_from_environment()
        trace.set_tracer_provider(provider)
        return cls(provider.get_tracer("quotagate"), provider)

    def start(self, ctx: RequestContext) -> None:
        parent = None
        if ctx.traceparent:
            carrier = {"traceparent": ctx.traceparent, "tracestate": ctx.tracestate}
            parent = _PROPAGATOR.extract(carrier)
        method = ctx.scope["method"]
        attributes = {
            "http.request.method": method,
            "client.address": ctx.client_ip,
            "quotagate.request_id": ctx.request_id,
        }
        name = method
        if ctx.endpoint.name != "unknown":  # a client's unknown path never names a span
            attributes["http.route"] = ctx.scope["path"]
            name = f"{method} {ctx.scope['path']}"
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        ctx.span = span
        _propagate(ctx, span)

    def finish(self, ctx: RequestContext, settle_started: float) -> None:
        span = ctx.span
        if span is None:
            return
        if ctx.target is not None:
            settle = self._tracer.start_span(
                "settlement", context=set_span_in_context(span), start_time=_ns(settle_started)
            )
            settle.end()
        span.set_attributes(_outcome(ctx))
        if ctx.status >= 500:
            span.set_status(StatusCode.ERROR, ctx.denial or ctx.decision)
        span.end()

    def wrap(self, stages: Sequence[Stage]) -> list[Stage]:
        wrapped: list[Stage] = []
        for stage in stages:
            if stage.name == "forward":
                wrapped.append(_Upstream(stage, self._tracer))
            elif stage.name in _SPANS:
                wrapped.append(_Traced(stage, self._tracer, _SPANS[stage.name]))
            else:
                wrapped.append(stage)
        return wrapped

    def close(self) -> None:
        if self._owned is not None:
            self._owned.shutdown()


def _propagate(ctx: RequestContext, span: trace.Span) -> None:
    """Send ``span`` upstream as the parent (the forward stage sends ctx.traceparent)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    ctx.traceparent = carrier.get("traceparent", "")
    ctx.tracestate = carrier.get("tracestate", ctx.tracestate)


def _outcome(ctx: RequestContext) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.response.status_code": ctx.status,
        "quotagate.decision": ctx.decision,
    }
    if ctx.principal is not None:
        attributes["quotagate.tenant"] = ctx.principal.tenant_name
        attributes["quotagate.key_id"] = ctx.principal.key_id
    if ctx.model:
        attributes["gen_ai.request.model"] = ctx.model[:200]
    if ctx.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = ctx.usage.prompt
        attributes["gen_ai.usage.output_tokens"] = ctx.usage.completion
    if ctx.denial:
        attributes["error.type"] = ctx.denial
    return attributes


async def _run_in(span: trace.Span, stage: Stage, ctx: RequestContext) -> None:
    """Run ``stage``; a gateway error marks ``span`` failed, with its code and class."""
    try:
        await stage(ctx)
    except GatewayError as exc:
        span.set_status(StatusCode.ERROR, exc.code)
        span.set_attribute("error.type", type(exc).__name__)
        raise


class _Traced:
    """A stage in a child span of the request's span."""

    def __init__(self, stage: Stage, tracer: trace.Tracer, span_name: str) -> None:
        self.name = stage.name
        self._stage = stage
        self._tracer = tracer
        self._span_name = span_name

    async def __call__(self, ctx: RequestContext) -> None:
        span = self._tracer.start_span(self._span_name, context=set_span_in_context(ctx.span))
        try:
            await _run_in(span, self._stage, ctx)
        finally:
            span.end()


class _Upstream:
    """The forward stage in a client span whose context goes upstream."""

    def __init__(self, stage: Stage, tracer: trace.Tracer) -> None:
        self.name = stage.name
        self._stage = stage
        self._tracer = tracer

    async def __call__(self, ctx: RequestContext) -> None:
        operation = _operation(ctx.endpoint.name)
        target = ctx.target
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": ctx.model[:200],
            "server.address": _host(target.base_url) if target is not None else "",
            "quotagate.deployment.region": target.region if target is not None else "",
        }
        if ctx.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = ctx.max_tokens
        span = self._tracer.start_span(
            f"{operation} {ctx.model[:200]}",
            context=set_span_in_context(ctx.span),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        _propagate(ctx, span)
        try:
            await _run_in(span, self._stage, ctx)
        finally:
            self._finish(ctx, span)

    @staticmethod
    def _finish(ctx: RequestContext, span: trace.Span) -> None:
        if ctx.first_token:
            span.add_event("gen_ai.first_token", timestamp=_ns(ctx.first_token))
        if ctx.status:
            span.set_attribute("http.response.status_code", ctx.status)
        if ctx.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", ctx.usage.prompt)
            span.set_attribute("gen_ai.usage.output_tokens", ctx.usage.completion)
        end = _ns(ctx.upstream_ended) if ctx.upstream_ended else None
        span.end(end_time=end)
