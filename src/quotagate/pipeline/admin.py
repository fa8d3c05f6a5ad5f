"""Operator endpoints for budgets on the public listener, under ``/admin/v1/``.

Off unless ``QUOTAGATE_ADMIN_TOKEN`` is set; guarded by that token (compared by its
SHA-256 digest in constant time), never by a tenant's key.

- ``GET /admin/v1/usage?tenant=&by=tenant,model&since=&until=&format=json|csv``
- ``GET /admin/v1/credits?tenant=NAME``
- ``POST /admin/v1/credits`` ``{"tenant", "kind", "budget"|"tokens", "expires", "note"}``
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from quotagate.budget.credits import credit_request
from quotagate.budget.pricing import format_money
from quotagate.budget.usage_report import UsageRow, format_rows, usage_report
from quotagate.db.repo import CreditRow, Database, DatabaseError
from quotagate.errors import AuthenticationFailed, BadRequest, NotFound
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import read_body
from quotagate.pipeline.responses import send_json


class AdminGuard:
    name = "admin_guard"

    def __init__(self, token: str | None) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    async def __call__(self, ctx: RequestContext) -> None:
        if self._digest is None:
            raise NotFound("The admin API is off: set QUOTAGATE_ADMIN_TOKEN to enable it.")
        given = hashlib.sha256(ctx.api_key.encode()).digest()
        if not ctx.api_key or not hmac.compare_digest(given, self._digest):
            raise AuthenticationFailed("Incorrect admin token.", code="invalid_admin_token")


def _query(ctx: RequestContext) -> dict[str, str]:
    raw = ctx.scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}


def _when(value: str | None, name: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        raise BadRequest(f"{name} is not an ISO date/time: {value!r}", param=name) from None


async def _tenant_id(db: Database, name: str | None) -> str | None:
    if not name:
        return None
    try:
        return (await db.get_tenant(name)).id
    except DatabaseError as exc:
        raise NotFound(str(exc), param="tenant") from None


class AdminUsage:
    name = "admin_usage"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __call__(self, ctx: RequestContext) -> None:
        q = _query(ctx)
        groups = [g for g in q.get("by", "tenant,model").split(",") if g]
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadRequest("format is json or csv", param="format")
        since, until = _when(q.get("since"), "since"), _when(q.get("until"), "until")
        tenant_id = await _tenant_id(self._db, q.get("tenant"))
        try:
            rows = await usage_report(
                self._db.engine, group_by=groups, since=since, until=until, tenant_id=tenant_id
            )
        except ValueError as exc:
            raise BadRequest(str(exc), param="by") from None
        names = {t.id: t.name for t in await self._db.list_tenants()}
        body = format_rows([with_tenant_name(r, names) for r in rows], fmt)  # type: ignore[arg-type]
        content = b"text/csv" if fmt == "csv" else b"application/json"
        ctx.status = 200
        headers = [
            (b"content-type", content),
            (b"content-length", str(len(body.encode())).encode()),
        ]
        await ctx.send({"type": "http.response.start", "status": 200, "headers": headers})
        await ctx.send({"type": "http.response.body", "body": body.encode()})


def with_tenant_name(row: UsageRow, names: dict[str, str]) -> UsageRow:
    """A report row with its tenant id replaced by the tenant's name."""
    tenant = row.group.get("tenant")
    if tenant is None:
        return row
    return dataclasses.replace(row, group={**row.group, "tenant": names.get(tenant, tenant)})


def credit_json(credit: CreditRow) -> dict[str, Any]:
    amount = format_money(credit.amount) if credit.resource == "budget" else str(credit.amount)
    expires = credit.expires_at.isoformat() if credit.expires_at else None
    return {
        "id": credit.id, "tenant_id": credit.tenant_id, "kind": credit.kind,
        "resource": credit.resource, "amount": amount, "expires_at": expires, "note": credit.note,
    }  # fmt: skip


class AdminCredits:
    name = "admin_credits"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.scope["method"] == "GET":
            tenant_id = await _tenant_id(self._db, _query(ctx).get("tenant"))
            if tenant_id is None:
                raise BadRequest("give ?tenant=NAME", param="tenant")
            rows = await self._db.list_credits(tenant_id)
            await send_json(ctx, 200, {"data": [credit_json(r) for r in rows]})
            return
        body = await read_body(ctx, 65536)
        try:
            doc = orjson.loads(body)
            assert isinstance(doc, dict)
            resource, amount, expires = credit_request(
                str(doc.get("kind", "topup")), doc.get("budget"), doc.get("tokens"),
                doc.get("expires"),
            )  # fmt: skip
        except (orjson.JSONDecodeError, AssertionError, ValueError, TypeError) as exc:
            raise BadRequest(f"invalid credit: {exc}") from None
        tenant_id = await _tenant_id(self._db, str(doc.get("tenant") or ""))
        if tenant_id is None:
            raise BadRequest("tenant is required", param="tenant")
        kind, note = str(doc.get("kind", "topup")), doc.get("note")
        row = await self._db.add_credit(tenant_id, kind, resource, amount, expires, note)
        await send_json(ctx, 201, credit_json(row))
