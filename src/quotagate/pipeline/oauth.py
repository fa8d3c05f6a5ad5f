"""The built-in issuer's endpoints: ``POST /oauth/token`` (client credentials),
``GET /.well-known/jwks.json`` and ``GET /.well-known/openid-configuration``.

The token endpoint answers in RFC 6749's shapes (``{"error", "error_description"}``,
``Cache-Control: no-store``), not OpenAI's: its clients are OAuth libraries. Before a
client is looked up or its secret hashed, the request is counted per client id and per
address in the limit store (``auth.oauth_issuer.per_client``/``per_address``), and
through the pre-auth address guard when one is configured (``shaping.ip_guard``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from urllib.parse import parse_qs, unquote_plus

from quotagate.auth.oauth_issuer import OAuthError, OAuthIssuer, client_id_shaped, invalid_client
from quotagate.config.schema import LimitRule, TokenRate
from quotagate.errors import ServiceUnavailable
from quotagate.ids import new_id
from quotagate.limits.engine import LimitEngine
from quotagate.limits.policy import CompiledLimit, ScopeValues, compile_limit
from quotagate.pipeline.admit import AdmitIp
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import read_body
from quotagate.pipeline.responses import send_json

log = logging.getLogger(__name__)
_MAX_FORM = 4096
_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_FORM = b"application/x-www-form-urlencoded"


def _header(ctx: RequestContext, name: bytes) -> bytes:
    for key, value in ctx.scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def _form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "The body is not a form.") from None
    if any(len(values) > 1 for values in fields.values()):
        raise OAuthError("invalid_request", "A parameter is repeated.")  # RFC 6749 §3.2
    return {name: values[0] for name, values in fields.items()}


def _basic(value: bytes) -> tuple[str, str]:
    """``client_secret_basic``: id and secret, each form-encoded (RFC 6749 §2.3.1)."""
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client() from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise invalid_client()
    return unquote_plus(client_id), unquote_plus(secret)


def _credentials(ctx: RequestContext, form: dict[str, str]) -> tuple[str, str]:
    authorization = _header(ctx, b"authorization")
    in_body = "client_secret" in form
    if authorization[:6].lower() == b"basic ":
        if in_body:  # RFC 6749 §2.3: one authentication method per request
            raise OAuthError("invalid_request", "Use one client authentication method.")
        return _basic(authorization)
    if in_body and form.get("client_id"):
        return form["client_id"], form["client_secret"]
    raise invalid_client()


def _limit(scope: str, rate: TokenRate) -> CompiledLimit:
    return compile_limit(LimitRule(scope=scope, requests=rate.requests, per=rate.per), "oauth.")


class TokenEndpoint:
    name = "oauth_token"

    def __init__(
        self, issuer: OAuthIssuer, engine: LimitEngine, guard: AdmitIp | None = None
    ) -> None:
        self._issuer = issuer
        self._engine = engine
        self._guard = guard
        config = issuer.config  # auth.oauth_issuer applies on restart
        self._limits = (_limit("key", config.per_client), _limit("ip", config.per_address))

    async def __call__(self, ctx: RequestContext) -> None:
        try:
            body = await self._grant(ctx)
        except OAuthError as exc:
            await self._refuse(ctx, exc)
            return
        await send_json(ctx, 200, body, _NO_STORE)

    async def _grant(self, ctx: RequestContext) -> dict[str, object]:
        if _header(ctx, b"content-type").split(b";")[0].strip().lower() != _FORM:
            raise OAuthError("invalid_request", "Send the parameters as a form.")
        form = _form(await read_body(ctx, _MAX_FORM))
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is missing.")
        client_id, secret = _credentials(ctx, form)
        if not client_id_shaped(client_id):
            raise invalid_client()
        await self._admit(ctx, client_id)
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", "Only client_credentials is supported.")
        try:
            client = await self._issuer.authenticate_client(client_id, secret)
        except OAuthError:
            raise
        except Exception as exc:  # the driver's errors vary: the database is unreachable
            log.warning("client lookup failed: %s", type(exc).__name__)
            raise ServiceUnavailable("Cannot verify the client right now.") from exc
        return self._issuer.issue(client.id, client.tenant_name, client.token_plan)

    async def _admit(self, ctx: RequestContext, client_id: str) -> None:
        """Count the attempt per address and per client id; 429 beyond either."""
        if self._guard is not None and (wait := self._guard.refused_for(ctx.client_ip)):
            raise _too_many("address", wait)
        values = ScopeValues(client_id, client_id, "", ctx.client_ip, "", self.name)
        unique = new_id()
        checks = [limit.check(values, unique) for limit in self._limits]
        admission = await self._engine.admit(self._limits, checks)
        if not admission.allowed:
            what = "client" if admission.denied == 0 else "address"
            retry_after = admission.outcomes[admission.denied].retry_after
            log.debug("token request refused: too many for this %s", what)
            raise _too_many(what, max(1, math.ceil(retry_after)))

    @staticmethod
    async def _refuse(ctx: RequestContext, exc: OAuthError) -> None:
        ctx.decision = "rate_limited" if exc.status == 429 else "denied_auth"
        headers = list(_NO_STORE)
        if exc.status == 401:  # RFC 6749 §5.2: invalid_client answers with a challenge
            headers.append((b"www-authenticate", b'Basic realm="quotagate"'))
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        body = {"error": exc.error, "error_description": exc.description}
        await send_json(ctx, exc.status, body, headers)


def _too_many(what: str, wait: int) -> OAuthError:
    # RFC 6749 names no error for this; "too_many_requests" is what common issuers send.
    return OAuthError(
        "too_many_requests",
        f"Too many token requests for this {what}; retry after {wait} s.",
        429,
        retry_after=wait,
    )


class JwksEndpoint:
    name = "oauth_jwks"

    def __init__(self, issuer: OAuthIssuer) -> None:
        self._issuer = issuer

    async def __call__(self, ctx: RequestContext) -> None:
        await send_json(ctx, 200, self._issuer.keys.jwks(), [(b"cache-control", b"max-age=60")])


class DiscoveryEndpoint:
    name = "oauth_discovery"

    def __init__(self, issuer: OAuthIssuer) -> None:
        self._issuer = issuer

    async def __call__(self, ctx: RequestContext) -> None:
        await send_json(ctx, 200, self._issuer.discovery(), [(b"cache-control", b"max-age=300")])
