"""Endpoints of the public listener that are not proxied: models, health, metrics."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from quotagate.config.snapshot import CompiledPlan
from quotagate.observability.multiprocess import metrics_registry
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.responses import send_json
from quotagate.pipeline.stage import PolicySource


class ListModels:
    """``GET /v1/models``: only the models the caller's plan may use."""

    name = "list_models"

    def __init__(self, policy: PolicySource) -> None:
        self._policy = policy
        self._created = int(time.time())

    async def __call__(self, ctx: RequestContext) -> None:
        plan: CompiledPlan = ctx.plan
        names = [m for m, r in self._policy.snapshot.catalog.items() if plan.allows(r.name)]
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "quotagate"}
            for m in names
        ]
        await send_json(ctx, 200, {"object": "list", "data": data})


class Healthz:
    """``GET /healthz``: the process is alive and serving."""

    name = "healthz"

    async def __call__(self, ctx: RequestContext) -> None:
        await send_json(ctx, 200, {"status": "ok"})


class Metrics:
    """``GET /metrics``: Prometheus text format, for every worker process."""

    name = "metrics"

    def __init__(self) -> None:
        self._registry = metrics_registry()

    async def __call__(self, ctx: RequestContext) -> None:
        body = generate_latest(self._registry)
        ctx.status = 200
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"x-request-id", ctx.request_id.encode()),
        ]
        await ctx.send({"type": "http.response.start", "status": 200, "headers": headers})
        await ctx.send({"type": "http.response.body", "body": body})
