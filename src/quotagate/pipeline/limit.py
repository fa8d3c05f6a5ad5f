"""``limit``: every rate limit that applies, decided in one atomic store call."""

from __future__ import annotations

from quotagate.config.snapshot import CompiledPlan
from quotagate.errors import RateLimited
from quotagate.limits.headers import rate_limit_headers
from quotagate.limits.policy import ScopeValues
from quotagate.pipeline.context import RequestContext
from quotagate.store.base import LimitStore


def scope_values(ctx: RequestContext) -> ScopeValues:
    p = ctx.principal
    assert p is not None, "limit runs after authenticate"
    return ScopeValues(p.tenant_id, p.key_id, p.user, ctx.client_ip, ctx.model, ctx.endpoint.name)


class Limit:
    name = "limit"

    def __init__(self, store: LimitStore) -> None:
        self._store = store

    async def __call__(self, ctx: RequestContext) -> None:
        plan: CompiledPlan = ctx.plan
        if not plan.limits:
            return
        values = scope_values(ctx)
        admission = await self._store.acquire([limit.check(values) for limit in plan.limits])
        headers = rate_limit_headers(plan.limits, admission, plan.policy_header)
        ctx.response_headers.extend(headers)
        if not admission.allowed:
            denied = plan.limits[admission.denied]
            raise RateLimited(
                f"Rate limit reached for {denied.unit} on {'+'.join(denied.scopes)}: "
                f"limit {denied.amount} per {denied.window:g}s. Retry after the time in "
                "the Retry-After header.",
            )
