"""``route``: model → the deployment that will serve this request."""

from __future__ import annotations

from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import PolicySource


class Route:
    name = "route"

    def __init__(self, policy: PolicySource) -> None:
        self._policy = policy

    async def __call__(self, ctx: RequestContext) -> None:
        route = self._policy.snapshot.catalog[ctx.model]
        ctx.target = route.pick()
        ctx.price = route.prices
