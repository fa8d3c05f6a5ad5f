"""``route``: model → the deployment that will serve this request (see
``quotagate.routing.router``); when neither the model nor its fallbacks can take it,
503 — unless the plan keeps cached answers and the request is deterministic: then the
limits still decide it, and the cache stage answers it from the cache or with the 503."""

from __future__ import annotations

from quotagate.errors import NoDeployment
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import PolicySource
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
        catalog = self._policy.snapshot.catalog
        try:
            target = self._router.serve(ctx, catalog)
        except NoDeployment as exc:
            if self._cache is None or not self._cache.could_serve(ctx):
                raise
            ctx.unroutable = exc
            target = catalog[ctx.model].targets[0]  # for the limits; never sent to
        ctx.target = target
        ctx.price = target.prices
        self._router.budget.request()
