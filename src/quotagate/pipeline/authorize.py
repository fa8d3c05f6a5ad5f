"""``authorize``: the plan allows this model; ``max_tokens`` within the plan's cap."""

from __future__ import annotations

from quotagate.config.snapshot import CompiledPlan
from quotagate.errors import BadRequest, NotFound, PermissionDenied
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import set_output_cap
from quotagate.pipeline.stage import PolicySource

_CLASSES = frozenset({"", "interactive", "batch"})  # "": none sent (interactive)


class Authorize:
    name = "authorize"

    def __init__(self, policy: PolicySource) -> None:
        self._policy = policy

    async def __call__(self, ctx: RequestContext) -> None:
        plan: CompiledPlan = ctx.plan
        if ctx.traffic_class not in _CLASSES:
            raise BadRequest(
                "x-quotagate-class must be 'interactive' or 'batch'.", param="x-quotagate-class"
            )
        route = self._policy.snapshot.catalog.get(ctx.model)
        if route is None:
            raise NotFound(
                f"The model '{ctx.model}' does not exist.", code="model_not_found", param="model"
            )
        if route.name != ctx.model:  # an alias: limits, billing and the upstream see the model
            ctx.model = ctx.payload["model"] = route.name
            ctx.payload_changed = True
        if not plan.allows(ctx.model):
            raise PermissionDenied(
                f"Your plan '{plan.name}' does not include the model '{ctx.model}'.",
                param="model",
            )
        scope = route.scope
        if scope is not None and (ctx.principal is None or scope not in ctx.principal.scopes):
            raise PermissionDenied(
                f"The model '{ctx.model}' needs the scope '{scope}'.",
                code="insufficient_scope",
                param="model",
            )
        if plan.max_tokens is not None and ctx.endpoint.generates:
            self._cap_max_tokens(ctx, plan.max_tokens, plan.reject_over_max)

    @staticmethod
    def _cap_max_tokens(ctx: RequestContext, cap: int, reject: bool) -> None:
        if ctx.max_tokens is not None and ctx.max_tokens <= cap:
            return
        if ctx.max_tokens is not None and reject:
            raise PermissionDenied(
                f"max_tokens {ctx.max_tokens} is above your plan's cap of {cap}.",
                code="max_tokens_exceeded",
                param="max_tokens",
            )
        # Clamp every field over the cap, or have forward fill the cap in when the
        # request names none (in the field the serving model takes). Forward re-encodes
        # a changed payload once; otherwise the client's bytes go upstream as sent.
        set_output_cap(ctx, cap)
