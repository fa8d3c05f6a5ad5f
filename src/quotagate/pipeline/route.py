"""``route``: model → the deployment that will serve this request (see
``quotagate.routing.router``); when neither the model nor its fallbacks can take it,
a cached answer for plans that degrade to the cache, else 503."""

from __future__ import annotations

from quotagate.errors import NoDeployment
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Answered, PolicySource
from quotagate.routing.cache import ResponseCache
from quotagate.routing.router import Router


class Route:
    name = "route"

    def __init__(
        self, policy: PolicySource, router: Router, cache: ResponseCache | None = None
    ) -> None:
        self._policy = policy
        self._router = router
        self._cache = cache

    async def __call__(self, ctx: RequestContext) -> None:
        try:
            target = self._router.serve(ctx, self._policy.snapshot.catalog)
        except NoDeployment:
            if self._cache is not None and await self._cache.degrade(ctx):
                raise Answered from None
            raise
        ctx.target = target
        ctx.price = target.prices
        self._router.budget.request()
