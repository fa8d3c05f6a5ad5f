"""``limit``: every limit that applies, decided in one atomic store call.

Concurrency leases taken here are released when the response has ended (the runner
awaits ``ctx.leases`` release through the engine).
"""

from __future__ import annotations

from quotagate.budget.estimate import prompt_tokens
from quotagate.config.snapshot import CompiledPlan
from quotagate.errors import RateLimited
from quotagate.ids import new_id
from quotagate.limits.engine import LimitEngine
from quotagate.limits.headers import rate_limit_headers
from quotagate.limits.policy import ScopeValues
from quotagate.pipeline.context import RequestContext
from quotagate.store.base import CounterCheck, LeaseCheck, RateCheck


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
        tokens = reserve_tokens(ctx, plan) if plan.has_tokens else 0
        checks = [
            limit.check(values, unique, tokens if limit.unit == "tokens" else 1)
            for limit in plan.limits
        ]
        admission = await self._engine.admit(plan.limits, checks)
        ctx.response_headers.extend(rate_limit_headers(plan.limits, admission, plan.policy_header))
        if not admission.allowed:
            denied = plan.limits[admission.denied]
            raise RateLimited(_refusal(denied.unit, denied.scopes, denied.amount, denied.window))
        if plan.has_leases:
            ctx.leases = [c for c in checks if isinstance(c, LeaseCheck)]
        if plan.has_tokens:
            ctx.reserved_tokens = tokens
            ctx.token_checks = [
                c for c, limit in zip(checks, plan.limits, strict=True)
                if limit.unit == "tokens" and isinstance(c, RateCheck | CounterCheck)
            ]  # fmt: skip
            if ctx.stream:
                ask_for_stream_usage(ctx)


def reserve_tokens(ctx: RequestContext, plan: CompiledPlan) -> int:
    """Prompt estimate + the most the answer may produce: taken up front, settled later."""
    ctx.prompt_estimate = prompt_tokens(ctx.payload, ctx.endpoint.name)
    output = (ctx.max_tokens or plan.default_max_tokens) if ctx.endpoint.generates else 0
    tokens = ctx.prompt_estimate + output
    for limit in plan.limits:
        if limit.unit == "tokens" and tokens > limit.capacity:
            raise RateLimited(
                f"Request too large for {limit.name}: it may use {tokens} tokens "
                f"(prompt ~{ctx.prompt_estimate} + max_tokens {output}), more than the "
                f"limit of {limit.capacity}. Lower max_tokens or shorten the prompt.",
                code="request_too_large",
            )
    return tokens


def ask_for_stream_usage(ctx: RequestContext) -> None:
    """Settlement needs the stream's usage chunk: ask for it, and note whether the client
    did (if not, the chunk is taken out of the stream before the client sees it)."""
    options = ctx.payload.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage") is True:
        return
    ctx.payload["stream_options"] = {**options, "include_usage": True}
    ctx.payload_changed = True
    ctx.strip_usage = True


def _refusal(unit: str, scopes: tuple[str, ...], amount: int, window: float) -> str:
    scope = "+".join(scopes)
    if unit == "concurrent":
        return f"Too many concurrent requests on {scope}: limit {amount} at once."
    return (
        f"Rate limit reached for {unit} on {scope}: limit {amount} per {window:g}s. "
        "Retry after the time in the Retry-After header."
    )
