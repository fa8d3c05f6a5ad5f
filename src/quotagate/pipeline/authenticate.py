"""``authenticate``: API key or JWT → Principal, and the caller's plan.

Our API keys start with ``qg-``; any other bearer goes to the JWT verifier when the
policy trusts some issuer.
"""

from __future__ import annotations

from quotagate.auth.api_keys import KeyAuthenticator
from quotagate.auth.jwt_auth import JwtAuthenticator
from quotagate.auth.keys import PREFIX
from quotagate.errors import AuthenticationFailed, PermissionDenied
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import PolicySource

_MISSING = (
    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
    "or in the 'x-api-key' header."
)


class Authenticate:
    name = "authenticate"

    def __init__(
        self, policy: PolicySource, keys: KeyAuthenticator, jwt: JwtAuthenticator | None = None
    ) -> None:
        self._policy = policy
        self._keys = keys
        self._jwt = jwt

    async def __call__(self, ctx: RequestContext) -> None:
        if not ctx.api_key:
            raise AuthenticationFailed(_MISSING)
        plans = self._policy.snapshot.plans
        if self._jwt is not None and not ctx.api_key.startswith(PREFIX):
            principal = await self._jwt.authenticate(ctx.api_key, plans)
        else:
            principal = await self._keys.authenticate(ctx.api_key)
        plan = plans.get(principal.plan)
        if plan is None:
            raise PermissionDenied(
                f"Your tenant's plan {principal.plan!r} is not defined on this gateway.",
                code="plan_not_found",
            )
        ctx.principal = principal
        ctx.plan = plan
