"""``authenticate``: API key → Principal, and the caller's plan."""

from __future__ import annotations

from quotagate.auth.api_keys import KeyAuthenticator
from quotagate.errors import AuthenticationFailed, PermissionDenied
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import PolicySource

_MISSING = (
    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
    "or in the 'x-api-key' header."
)


class Authenticate:
    name = "authenticate"

    def __init__(self, policy: PolicySource, keys: KeyAuthenticator) -> None:
        self._policy = policy
        self._keys = keys

    async def __call__(self, ctx: RequestContext) -> None:
        if not ctx.api_key:
            raise AuthenticationFailed(_MISSING)
        principal = await self._keys.authenticate(ctx.api_key)
        plan = self._policy.snapshot.plans.get(principal.plan)
        if plan is None:
            raise PermissionDenied(
                f"Your tenant's plan {principal.plan!r} is not defined on this gateway.",
                code="plan_not_found",
            )
        ctx.principal = principal
        ctx.plan = plan
