"""``limit``: every limit that applies, decided in one atomic store call.

Concurrency leases taken here are released when the response has ended (the runner
awaits ``ctx.leases`` release through the engine).
"""

from __future__ import annotations

from quotagate.config.snapshot import CompiledPlan
from quotagate.errors import RateLimited
from quotagate.ids import new_id
from quotagate.limits.engine import LimitEngine
from quotagate.limits.headers import rate_limit_headers
from quotagate.limits.policy import ScopeValues
from quotagate.pipeline.context import RequestContext
from quotagate.store.base import LeaseCheck


def scope_values(ctx: RequestContext) -> ScopeValues:
    p = ctx.principal
    assert p is not None, "limit runs after authenticate"
    return ScopeValues(
        p.tenant_id, p.key_id, p.user, ctx.client_ip, ctx.model, ctx.endpoint.name,
        ctx.scope["headers"],
    )  # fmt: skip


class Limit:
    name = "limit"

    def __init__(self, engine: LimitEngine) -> None:
        self._engine = engine

    async def __call__(self, ctx: RequestContext) -> None:
        plan: CompiledPlan = ctx.plan
        if not plan.limits:
            return
        values = scope_values(ctx)
        unique = new_id()  # lease / log entry id: never the client's request id
        checks = [limit.check(values, unique) for limit in plan.limits]
        admission = await self._engine.admit(plan.limits, checks)
        ctx.response_headers.extend(rate_limit_headers(plan.limits, admission, plan.policy_header))
        if not admission.allowed:
            denied = plan.limits[admission.denied]
            raise RateLimited(_refusal(denied.unit, denied.scopes, denied.amount, denied.window))
        if plan.has_leases:
            ctx.leases = [c for c in checks if isinstance(c, LeaseCheck)]


def _refusal(unit: str, scopes: tuple[str, ...], amount: int, window: float) -> str:
    scope = "+".join(scopes)
    if unit == "concurrent":
        return f"Too many concurrent requests on {scope}: limit {amount} at once."
    return (
        f"Rate limit reached for requests on {scope}: limit {amount} per {window:g}s. "
        "Retry after the time in the Retry-After header."
    )
