"""Tenants and API keys in SQLite or PostgreSQL (SQLAlchemy 2 async Core)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quotagate.auth.keys import generate_key, hash_key
from quotagate.auth.principal import Grant
from quotagate.db import migrate
from quotagate.db.oauth_clients import OAuthClientStore
from quotagate.db.schema import api_keys, credits, tenants

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class DatabaseError(Exception):
    """A repository operation failed; the message is safe to show an operator."""


class NotFoundError(DatabaseError):
    """What the operation names does not exist (or is no longer active)."""


@dataclass(slots=True, frozen=True)
class TenantRow:
    id: str
    name: str
    plan: str
    status: str
    created_at: datetime
    timezone: str = "UTC"
    billing_day: int = 1


@dataclass(slots=True, frozen=True)
class KeyRow:
    id: str
    tenant_id: str
    tenant_name: str
    plan: str
    tenant_status: str
    name: str | None
    user_id: str | None
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None
    timezone: str = "UTC"
    billing_day: int = 1
    bypass_limits: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite: naive UTC


def _engine(url: str, schema: str | None) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    args: dict[str, Any] = {}
    if schema:
        if not _SCHEMA_NAME.match(schema):
            raise DatabaseError(f"invalid schema name {schema!r}")
        args["server_settings"] = {"search_path": schema}
    return create_async_engine(url, connect_args=args, pool_pre_ping=True)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Write-ahead logging, so that readers (``quotagate usage``, reconcile, the admin
    API) neither block the ledger's writes nor wait for them: under the default rollback
    journal, a report's open read held every commit back until it ended or the busy
    timeout failed the batch (spooled, replayed later). ``synchronous=FULL`` keeps each
    commit durable across a power loss, as before (the log is fsync'ed per commit)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


@dataclass(slots=True, frozen=True)
class CreditRow:
    id: str
    tenant_id: str
    kind: str  # override | topup | burst
    resource: str  # budget (micro-units) | tokens
    amount: int
    starts_at: datetime
    expires_at: datetime | None
    note: str | None
    created_at: datetime


class CreditStore:
    """Per-tenant overrides and one-off credits (mixed into Database)."""

    engine: AsyncEngine

    async def add_credit(
        self,
        tenant_id: str,
        kind: str,
        resource: str,
        amount: int,
        expires_at: datetime | None = None,
        note: str | None = None,
    ) -> CreditRow:
        now = _now()
        row = CreditRow(
            secrets.token_hex(8), tenant_id, kind, resource, amount, now, expires_at, note, now
        )
        async with self.engine.begin() as conn:
            await conn.execute(credits.insert().values(**_fields(row)))
        return row

    async def list_credits(self, tenant_id: str, active_only: bool = False) -> list[CreditRow]:
        query = select(credits).where(credits.c.tenant_id == tenant_id)
        if active_only:
            now = _now()
            query = query.where(
                credits.c.starts_at <= now,
                (credits.c.expires_at.is_(None)) | (credits.c.expires_at > now),
            )
        async with self.engine.connect() as conn:
            result = await conn.execute(query.order_by(credits.c.created_at))
            return [CreditRow(**r._mapping) for r in result]

    async def grants(self, tenant_id: str) -> tuple[dict[str, Grant] | None, float]:
        """What the tenant's valid credits make of each resource (None when none), and
        for how many seconds that holds: until the first of them expires (inf when none
        does). A cache of the grants must not outlive that: an expired burst credit
        would go on applying."""
        rows = await self.list_credits(tenant_id, active_only=True)
        if not rows:
            return None, float("inf")
        now = _now()
        holds = min(
            ((_utc(r.expires_at) - now).total_seconds() for r in rows if r.expires_at),
            default=float("inf"),
        )
        found: dict[str, Grant] = {}
        for row in rows:  # oldest first: the newest override wins
            override, extra = found.get(row.resource, Grant(None, 0))
            if row.kind == "override":
                override = row.amount
            else:
                extra += row.amount
            found[row.resource] = Grant(override, extra)
        return found, max(0.0, holds)


class Database(CreditStore, OAuthClientStore):
    def __init__(self, url: str, schema: str | None = None) -> None:
        self.schema = schema
        self.engine = _engine(url, schema)

    async def create_schema(self) -> None:
        """Create or upgrade the tables (Alembic migrations, to head)."""
        async with self.engine.begin() as conn:
            if self.schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(migrate.upgrade)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()

    async def create_tenant(
        self, name: str, plan: str, timezone: str = "UTC", billing_day: int = 1
    ) -> TenantRow:
        row = TenantRow(secrets.token_hex(8), name, plan, "active", _now(), timezone, billing_day)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(tenants.insert().values(**_as_dict(row)))
        except IntegrityError as exc:
            raise DatabaseError(f"tenant {name!r} already exists") from exc
        return row

    async def list_tenants(self) -> list[TenantRow]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(tenants).order_by(tenants.c.name))
            return [TenantRow(**r._mapping) for r in result]

    async def get_tenant(self, name: str) -> TenantRow:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(tenants).where(tenants.c.name == name))
            row = result.first()
        if row is None:
            raise NotFoundError(f"no tenant named {name!r}")
        return TenantRow(**row._mapping)

    async def create_key(
        self, tenant_name: str, secret: bytes, name: str | None = None, user: str | None = None
    ) -> tuple[str, str]:
        """Create a key for ``tenant_name``; returns ``(key_id, plaintext)``, shown once."""
        tenant = await self.get_tenant(tenant_name)
        key_id, plaintext = generate_key()
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    tenant_id=tenant.id,
                    name=name,
                    user_id=user,
                    key_hash=hash_key(secret, plaintext),
                    created_at=_now(),
                )
            )
        return key_id, plaintext

    async def list_keys(self, tenant_name: str | None = None) -> list[KeyRow]:
        query = _key_query()
        if tenant_name is not None:
            query = query.where(tenants.c.name == tenant_name)
        async with self.engine.connect() as conn:
            result = await conn.execute(query.order_by(api_keys.c.created_at))
            return [KeyRow(**r._mapping) for r in result]

    async def find_key(self, key_id: str) -> KeyRow | None:
        async with self.engine.connect() as conn:
            result = await conn.execute(_key_query().where(api_keys.c.id == key_id))
            row = result.first()
        return None if row is None else KeyRow(**row._mapping)

    async def revoke_key(self, key_id: str, at: datetime | None = None) -> None:
        """Revoke now, or at ``at`` (an expiry, a rotation's overlap). A key still
        working (not revoked, or revoked at a later time) can be; a revoked one not."""
        now = _now()
        working = api_keys.c.revoked_at.is_(None) | (api_keys.c.revoked_at > now)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, working)
                .values(revoked_at=at or now)
            )
        if result.rowcount == 0:
            raise NotFoundError(f"no active key with id {key_id!r}")


def _fields(row: object) -> dict[str, Any]:
    return {f: getattr(row, f) for f in row.__dataclass_fields__}  # type: ignore[attr-defined]


def _as_dict(row: TenantRow) -> dict[str, Any]:
    return {f: getattr(row, f) for f in TenantRow.__dataclass_fields__}


def _key_query() -> Any:
    return select(
        api_keys.c.id,
        api_keys.c.tenant_id,
        tenants.c.name.label("tenant_name"),
        tenants.c.plan,
        tenants.c.status.label("tenant_status"),
        api_keys.c.name,
        api_keys.c.user_id,
        api_keys.c.key_hash,
        api_keys.c.created_at,
        api_keys.c.revoked_at,
        tenants.c.timezone,
        tenants.c.billing_day,
        api_keys.c.bypass_limits,
    ).join(tenants, tenants.c.id == api_keys.c.tenant_id)
