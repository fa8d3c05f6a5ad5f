"""The admin API (FastAPI), served on its own listener (``admin.listen``).

Guarded by an admin token (``quotagate admin-tokens create``, stored hashed) or the
bootstrap token in ``QUOTAGATE_ADMIN_TOKEN`` (kept in memory as a digest only); a
tenant's API key is never an admin credential. Every change is written to the audit
log with the acting token's name. The OpenAPI document is at ``/admin/openapi.json``.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run
# time, and the dependency aliases below are local to build_admin_app.
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from quotagate.admin.repo import TOKEN_PREFIX, AdminRepo, client_json, key_json, tenant_json
from quotagate.auth.invalidation import Stale
from quotagate.auth.jwt_auth import claim_at, scopes_of
from quotagate.budget.credits import (
    MAX_BUDGET,
    MAX_RATE_FACTOR,
    MAX_TOKENS,
    RATE_PERMILLE,
    credit_json,
    credit_request,
    expiry,
)
from quotagate.budget.usage_report import (
    format_rows,
    report_currency,
    usage_report,
    with_tenant_name,
)
from quotagate.db.repo import DatabaseError, NotFoundError
from quotagate.errors import GatewayError
from quotagate.observability.multiprocess import metrics_registry

if TYPE_CHECKING:
    from quotagate.app import Gateway

log = logging.getLogger("quotagate.admin")
BOOTSTRAP_ENV = "QUOTAGATE_ADMIN_TOKEN"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Body):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    plan: str = Field(min_length=1, max_length=100)
    timezone: str = Field(default="UTC", max_length=64)
    billing_day: int = Field(default=1, ge=1, le=31)


class TenantUpdate(_Body):
    plan: str | None = Field(default=None, min_length=1, max_length=100)
    status: Literal["active", "suspended"] | None = None


class KeyCreate(_Body):
    tenant: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    user: str | None = Field(default=None, max_length=200)


class KeyExpire(_Body):
    at: str = Field(min_length=1, max_length=40)  # "30d", or an ISO date/time


class KeyRotate(_Body):
    overlap_seconds: float = Field(default=3600, ge=0, le=30 * 86400)


class ClientCreate(_Body):
    tenant: str = Field(min_length=1, max_length=200)
    plan: str | None = Field(default=None, min_length=1, max_length=100)
    name: str | None = Field(default=None, max_length=200)


class KeyBypass(_Body):
    enabled: bool
    reason: str = Field(min_length=1, max_length=200)


class RateRaise(_Body):
    tenant: str = Field(min_length=1, max_length=200)
    factor: float = Field(gt=1.0, le=MAX_RATE_FACTOR)
    expires: str = Field(min_length=1, max_length=32)  # "2h", or an ISO date/time
    note: str | None = Field(default=None, max_length=200)


class RateClear(_Body):
    tenant: str = Field(min_length=1, max_length=200)


class CreditCreate(_Body):
    tenant: str = Field(min_length=1, max_length=200)
    kind: Literal["topup", "burst", "override"] = "topup"
    budget: float | None = Field(default=None, ge=0, le=MAX_BUDGET)  # the plan's currency
    tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    expires: str | None = Field(default=None, max_length=32)
    note: str | None = Field(default=None, max_length=200)


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """OpenAI-shaped, like every other error the gateway returns."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class AdminFailure(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def build_admin_app(gateway: "Gateway") -> FastAPI:
    repo = AdminRepo(gateway.db, gateway.settings.server_secret())
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    bootstrap_digest = hashlib.sha256(bootstrap.encode()).digest() if bootstrap else None
    app = FastAPI(
        title="quotagate admin API",
        version="1",
        openapi_url="/admin/openapi.json",
        docs_url="/admin/docs",
        redoc_url=None,
    )

    @app.exception_handler(AdminFailure)
    async def _failure(_: Request, exc: AdminFailure) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(DatabaseError)
    async def _db_failure(_: Request, exc: DatabaseError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return _error(404, str(exc), "not_found")
        return _error(409, str(exc), "conflict")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where}: {first.get('msg', 'invalid')}", "invalid_request", where)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("admin API: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "The admin API failed to handle the request.", "internal_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "http_error")

    async def actor(request: Request) -> str:
        name = await verified_actor(request)
        request.state.admin_actor = name  # for the access log
        return name

    async def verified_actor(request: Request) -> str:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            raise AdminFailure(401, "An admin token is required.", "missing_admin_token")
        if bootstrap_digest is not None and hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), bootstrap_digest
        ):
            return "bootstrap"
        if token.startswith(TOKEN_PREFIX):
            name = await repo.token_name(token)
            if name is None:
                raise AdminFailure(401, "Incorrect admin token.", "invalid_admin_token")
            return name
        return await jwt_actor(token)

    async def jwt_actor(token: str) -> str:
        """An operator's JWT: any trusted issuer, with the configured admin scope."""
        scope = gateway.snapshot.policy.admin.jwt_scope
        jwt = gateway.identity.jwt
        if scope is None or jwt is None or token.count(".") != 2:
            raise AdminFailure(401, "Incorrect admin token.", "invalid_admin_token")
        try:
            issuer, claims = await jwt.verifier.verify(token)
        except GatewayError as exc:
            raise AdminFailure(401, exc.message, "invalid_admin_token") from None
        path = issuer.claims.scopes or "scope"
        if scope not in scopes_of(claim_at(claims, path)):
            raise AdminFailure(403, f"The token lacks the {scope!r} scope.", "insufficient_scope")
        return f"jwt:{claims.get('sub')}@{issuer.issuer}"

    Actor = Annotated[str, Depends(actor)]

    async def forget(
        tenant: str | None = None, key_id: str | None = None, client_id: str | None = None
    ) -> None:
        """Every instance drops what went stale now, for API keys and JWTs alike (Redis
        pub/sub; the credential cache TTL is the backstop)."""
        stale = Stale(
            (key_id,) if key_id else (),
            (tenant,) if tenant else (),
            (client_id,) if client_id else (),
        )
        await gateway.invalidation.publish(stale)

    def plan_exists(plan: str) -> None:
        if plan not in gateway.snapshot.plans:
            raise AdminFailure(422, f"unknown plan {plan!r}", "unknown_plan", "plan")

    registry = metrics_registry()

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus exposition, every worker process counted; like the rest of this
        listener, reachable only where the admin listener is (no token: scrapers)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # --- tenants ---------------------------------------------------------------------

    @app.get("/admin/v1/tenants", tags=["tenants"])
    async def list_tenants(_: Actor) -> dict[str, Any]:
        return {"data": [tenant_json(t) for t in await gateway.db.list_tenants()]}

    @app.post("/admin/v1/tenants", status_code=201, tags=["tenants"])
    async def create_tenant(body: TenantCreate, who: Actor) -> dict[str, Any]:
        plan_exists(body.plan)
        row = await repo.create_tenant(who, body.name, body.plan, body.timezone, body.billing_day)
        return tenant_json(row)

    @app.get("/admin/v1/tenants/{name}", tags=["tenants"])
    async def get_tenant(name: str, _: Actor) -> dict[str, Any]:
        return tenant_json(await gateway.db.get_tenant(name))

    @app.patch("/admin/v1/tenants/{name}", tags=["tenants"])
    async def update_tenant(name: str, body: TenantUpdate, who: Actor) -> dict[str, Any]:
        if body.plan is not None:
            plan_exists(body.plan)
        row = await repo.update_tenant(who, name, body.plan, body.status)
        await forget(tenant=name)
        return tenant_json(row)

    # --- keys --------------------------------------------------------------------------

    @app.get("/admin/v1/keys", tags=["keys"])
    async def list_keys(
        _: Actor, tenant: Annotated[str | None, Query(max_length=200)] = None
    ) -> dict[str, Any]:
        return {"data": [key_json(k) for k in await gateway.db.list_keys(tenant)]}

    @app.post("/admin/v1/keys", status_code=201, tags=["keys"])
    async def create_key(body: KeyCreate, who: Actor) -> dict[str, Any]:
        row, plaintext = await repo.create_key(who, body.tenant, body.name, body.user)
        return {**key_json(row), "key": plaintext}  # shown once

    @app.post("/admin/v1/keys/{key_id}/revoke", tags=["keys"])
    async def revoke_key(key_id: str, who: Actor) -> dict[str, Any]:
        row = await repo.revoke_key(who, key_id)
        await forget(key_id=key_id)
        return key_json(row)

    @app.post("/admin/v1/keys/{key_id}/expire", tags=["keys"])
    async def expire_key(key_id: str, body: KeyExpire, who: Actor) -> dict[str, Any]:
        """The key stops working at ``at`` (a duration from now, or a date/time)."""
        try:
            at = expiry(body.at)
        except ValueError:
            message = "at: a duration (30d) or an ISO date/time"
            raise AdminFailure(422, message, "invalid_request", "at") from None
        row = await repo.revoke_key(who, key_id, at, action="key.expire")
        await forget(key_id=key_id)
        return key_json(row)

    @app.post("/admin/v1/keys/{key_id}/rotate", status_code=201, tags=["keys"])
    async def rotate_key(key_id: str, body: KeyRotate, who: Actor) -> dict[str, Any]:
        row, plaintext = await repo.rotate_key(who, key_id, body.overlap_seconds)
        await forget(key_id=key_id)
        return {**key_json(row), "key": plaintext, "replaces": key_id}

    @app.post("/admin/v1/keys/{key_id}/bypass", tags=["keys"])
    async def bypass_key(key_id: str, body: KeyBypass, who: Actor) -> dict[str, Any]:
        row = await repo.set_bypass(who, key_id, body.enabled, body.reason)
        if body.enabled:
            log.warning("emergency bypass ON for key %s by %s: %s", key_id, who, body.reason)
        await forget(key_id=key_id)
        return key_json(row)

    @app.post("/admin/v1/rate-raises", status_code=201, tags=["overrides"])
    async def raise_rates(body: RateRaise, who: Actor) -> dict[str, Any]:
        """Multiply every rate limit of the tenant's plan by ``factor`` until ``expires``."""
        try:
            expires = expiry(body.expires)
        except ValueError:
            raise AdminFailure(
                422, "expires: a duration or an ISO date/time", "invalid_request", "expires"
            ) from None
        amount = round(body.factor * RATE_PERMILLE)
        row = await repo.add_credit(
            who, body.tenant, "override", "rate", amount, expires, body.note, "rate.raise"
        )
        await forget(tenant=body.tenant)
        return credit_json(row)

    @app.post("/admin/v1/rate-raises/clear", tags=["overrides"])
    async def clear_rates(body: RateClear, who: Actor) -> dict[str, Any]:
        """End the tenant's rate raises and spend-anomaly throttles now."""
        ended = await repo.clear_rate_overrides(who, body.tenant)
        await forget(tenant=body.tenant)
        return {"tenant": body.tenant, "ended": ended}

    # --- OAuth clients -------------------------------------------------------------------

    @app.get("/admin/v1/oauth-clients", tags=["oauth clients"])
    async def list_clients(
        _: Actor, tenant: Annotated[str | None, Query(max_length=200)] = None
    ) -> dict[str, Any]:
        return {"data": [client_json(c) for c in await gateway.db.list_clients(tenant)]}

    @app.post("/admin/v1/oauth-clients", status_code=201, tags=["oauth clients"])
    async def create_client(body: ClientCreate, who: Actor) -> dict[str, Any]:
        if body.plan is not None:
            plan_exists(body.plan)
        row, secret = await repo.create_client(who, body.tenant, body.plan, body.name)
        return {**client_json(row), "client_secret": secret}  # shown once

    @app.post("/admin/v1/oauth-clients/{client_id}/revoke", tags=["oauth clients"])
    async def revoke_client(client_id: str, who: Actor) -> dict[str, Any]:
        row = await repo.revoke_client(who, client_id)
        await forget(client_id=client_id)
        return client_json(row)

    # --- credits and usage -------------------------------------------------------------

    @app.get("/admin/v1/credits", tags=["credits"])
    async def list_credits(
        _: Actor, tenant: Annotated[str, Query(min_length=1, max_length=200)]
    ) -> dict[str, Any]:
        row = await gateway.db.get_tenant(tenant)
        return {"data": [credit_json(c) for c in await gateway.db.list_credits(row.id)]}

    @app.post("/admin/v1/credits", status_code=201, tags=["credits"])
    async def add_credit(body: CreditCreate, who: Actor) -> dict[str, Any]:
        try:
            resource, amount, expires = credit_request(
                body.kind, body.budget, body.tokens, body.expires
            )
        except ValueError as exc:
            raise AdminFailure(422, f"invalid credit: {exc}", "invalid_credit") from None
        row = await repo.add_credit(
            who, body.tenant, body.kind, resource, amount, expires, body.note
        )
        await forget(tenant=body.tenant)
        return credit_json(row)

    @app.get("/admin/v1/usage", tags=["usage"])
    async def usage(
        _: Actor,
        tenant: Annotated[str | None, Query(max_length=200)] = None,
        by: Annotated[str, Query(max_length=100)] = "tenant,model",
        since: datetime | None = None,
        until: datetime | None = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        tenant_id = (await gateway.db.get_tenant(tenant)).id if tenant else None
        try:
            rows = await usage_report(
                gateway.db.engine, group_by=[g for g in by.split(",") if g], since=since,
                until=until, tenant_id=tenant_id,
            )  # fmt: skip
        except ValueError as exc:
            raise AdminFailure(422, str(exc), "invalid_request", "by") from None
        names = {t.id: t.name for t in await gateway.db.list_tenants()}
        rows = [with_tenant_name(r, names) for r in rows]
        body = format_rows(rows, format, report_currency(gateway.snapshot.policy))
        media = "text/csv" if format == "csv" else "application/json"
        return Response(body, media_type=media)

    # --- audit -------------------------------------------------------------------------

    @app.get("/admin/v1/audit", tags=["audit"])
    async def audit(
        _: Actor,
        target: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        entries = await repo.audit_entries(target, action, limit)
        return {"data": [e.as_json() for e in entries]}

    return app


AsgiApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
