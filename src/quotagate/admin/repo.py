"""What the admin API and the CLI change in the database, each change audited.

Admin tokens look like ``qga-<id>_<secret>`` (never like a tenant's ``qg-`` key) and
are stored as HMAC-SHA256 under the server secret. Audit rows name keys and tokens by
id only; before/after are the changed object's public fields.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select, update

from quotagate.auth.keys import generate_key, hash_key, parse_key_id, verify_key
from quotagate.budget.credits import credit_json
from quotagate.db.oauth_clients import ClientRow
from quotagate.db.repo import (
    CreditRow,
    Database,
    DatabaseError,
    KeyRow,
    NotFoundError,
    TenantRow,
)
from quotagate.db.schema import admin_tokens, api_keys, audit_log, credits, tenants

TOKEN_PREFIX = "qga-"
TENANT_STATUSES = ("active", "suspended")


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def tenant_json(row: TenantRow) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "plan": row.plan, "status": row.status,
        "timezone": row.timezone, "billing_day": row.billing_day,
        "created_at": _iso(row.created_at),
    }  # fmt: skip


def key_json(row: KeyRow) -> dict[str, Any]:
    return {
        "key_id": row.id, "tenant": row.tenant_name, "name": row.name, "user": row.user_id,
        "created_at": _iso(row.created_at), "revoked_at": _iso(row.revoked_at),
        "bypass_limits": row.bypass_limits,
    }  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    moment = _utc(moment)
    return moment.isoformat() if moment is not None else None


def client_json(row: ClientRow) -> dict[str, Any]:
    return {
        "client_id": row.id, "tenant": row.tenant_name, "name": row.name,
        "plan": row.token_plan,  # its own, else its tenant's (what its tokens carry)
        "created_at": _iso(row.created_at), "revoked_at": _iso(row.revoked_at),
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    at: datetime
    actor: str
    action: str
    target: str
    before: Any
    after: Any

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": _iso(self.at), "actor": self.actor, "action": self.action,
            "target": self.target, "before": self.before, "after": self.after,
        }  # fmt: skip


class AdminRepo:
    def __init__(self, db: Database, secret: bytes) -> None:
        self.db = db
        self._secret = secret

    # --- admin tokens --------------------------------------------------------------

    async def create_token(self, name: str, actor: str) -> tuple[str, str]:
        """Stored like an API key (auth/keys.py), with its own prefix."""
        token_id, plaintext = generate_key(TOKEN_PREFIX)
        token_hash = hash_key(self._secret, plaintext)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                admin_tokens.insert().values(
                    id=token_id, name=name, token_hash=token_hash, created_at=_now()
                )
            )
        await self.audit(actor, "admin_token.create", token_id, None, {"name": name})
        return token_id, plaintext

    async def token_name(self, plaintext: str) -> str | None:
        """The name of the live admin token ``plaintext``, or None."""
        token_id = parse_key_id(plaintext, TOKEN_PREFIX)
        if token_id is None:
            return None
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(select(admin_tokens).where(admin_tokens.c.id == token_id))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        if not verify_key(self._secret, plaintext, row.token_hash):
            return None
        return f"token:{row.name}"

    async def revoke_token(self, token_id: str, actor: str) -> None:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(admin_tokens)
                .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        if result.rowcount == 0:
            raise NotFoundError(f"no active admin token with id {token_id!r}")
        await self.audit(actor, "admin_token.revoke", token_id, None, None)

    # --- tenants -------------------------------------------------------------------

    async def create_tenant(
        self, actor: str, name: str, plan: str, timezone: str = "UTC", billing_day: int = 1
    ) -> TenantRow:
        row = await self.db.create_tenant(name, plan, timezone, billing_day)
        await self.audit(actor, "tenant.create", name, None, tenant_json(row))
        return row

    async def update_tenant(
        self, actor: str, name: str, plan: str | None = None, status: str | None = None
    ) -> TenantRow:
        before = await self.db.get_tenant(name)
        changes: dict[str, Any] = {}
        if plan is not None:
            changes["plan"] = plan
        if status is not None:
            if status not in TENANT_STATUSES:
                raise DatabaseError(f"status must be one of {', '.join(TENANT_STATUSES)}")
            changes["status"] = status
        if changes:
            async with self.db.engine.begin() as conn:
                await conn.execute(update(tenants).where(tenants.c.id == before.id).values(changes))
        after = await self.db.get_tenant(name)
        await self.audit(actor, "tenant.update", name, tenant_json(before), tenant_json(after))
        return after

    # --- keys ----------------------------------------------------------------------

    async def create_key(
        self, actor: str, tenant: str, name: str | None = None, user: str | None = None
    ) -> tuple[KeyRow, str]:
        key_id, plaintext = await self.db.create_key(tenant, self._secret, name, user)
        row = await self._key(key_id)
        await self.audit(actor, "key.create", key_id, None, key_json(row))
        return row, plaintext

    async def revoke_key(
        self, actor: str, key_id: str, at: datetime | None = None, action: str = "key.revoke"
    ) -> KeyRow:
        """Revoke now, or at ``at`` (an expiry; a key being rotated works until then)."""
        before = await self._key(key_id)
        await self.db.revoke_key(key_id, at)
        after = await self._key(key_id)
        await self.audit(actor, action, key_id, key_json(before), key_json(after))
        return after

    async def rotate_key(self, actor: str, key_id: str, overlap: float) -> tuple[KeyRow, str]:
        """A new key for the same tenant, name and user; the old one keeps working for
        ``overlap`` seconds so clients can switch without an outage."""
        old = await self._key(key_id)
        if old.revoked_at is not None:
            raise DatabaseError(f"key {key_id!r} is revoked or already being rotated")
        new, plaintext = await self.create_key(actor, old.tenant_name, old.name, old.user_id)
        await self.revoke_key(actor, key_id, _now() + timedelta(seconds=overlap))
        return new, plaintext

    async def set_bypass(self, actor: str, key_id: str, enabled: bool, reason: str) -> KeyRow:
        """The emergency bypass: a critical key skips every limit while it is on."""
        before = await self._key(key_id)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(bypass_limits=enabled)
            )
        after = await self._key(key_id)
        action = "key.bypass_on" if enabled else "key.bypass_off"
        await self.audit(
            actor, action, key_id, key_json(before), {**key_json(after), "reason": reason}
        )
        return after

    async def _key(self, key_id: str) -> KeyRow:
        row = await self.db.find_key(key_id)
        if row is None:
            raise NotFoundError(f"no key with id {key_id!r}")
        return row

    async def add_credit(
        self,
        actor: str,
        tenant: str,
        kind: str,
        resource: str,
        amount: int,
        expires: datetime | None,
        note: str | None,
        action: str = "credit.add",
    ) -> CreditRow:
        """A credit, override or rate change for ``tenant``, audited as ``action``."""
        row = await self.db.get_tenant(tenant)
        credit = await self.db.add_credit(row.id, kind, resource, amount, expires, note)
        await self.audit(actor, action, tenant, None, credit_json(credit))
        return credit

    async def clear_rate_overrides(self, actor: str, tenant: str) -> int:
        """End every rate raise or throttle of ``tenant`` now; how many ended."""
        row = await self.db.get_tenant(tenant)
        now = _now()
        live = (credits.c.expires_at.is_(None)) | (credits.c.expires_at > now)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(credits)
                .where(credits.c.tenant_id == row.id, credits.c.resource == "rate", live)
                .values(expires_at=now)
            )
        await self.audit(actor, "rate.clear", tenant, None, {"ended": result.rowcount})
        return int(result.rowcount)

    # --- OAuth clients of the built-in issuer -----------------------------------------

    async def create_client(
        self, actor: str, tenant: str, plan: str | None, name: str | None
    ) -> tuple[ClientRow, str]:
        row = await self.db.get_tenant(tenant)
        client_id, secret = await self.db.create_client(row.id, self._secret, plan, name)
        client = await self.db.find_client(client_id)
        assert client is not None
        await self.audit(actor, "oauth_client.create", client_id, None, client_json(client))
        return client, secret

    async def revoke_client(self, actor: str, client_id: str) -> ClientRow:
        if not await self.db.revoke_client(client_id):
            raise NotFoundError(f"no active OAuth client with id {client_id!r}")
        client = await self.db.find_client(client_id)
        assert client is not None
        await self.audit(actor, "oauth_client.revoke", client_id, None, client_json(client))
        return client

    # --- audit ---------------------------------------------------------------------

    async def audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                audit_log.insert().values(
                    id=secrets.token_hex(8),
                    at=_now(),
                    actor=actor,
                    action=action,
                    target=target,
                    before=_dump(before),
                    after=_dump(after),
                )
            )

    async def audit_entries(
        self, target: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.at.desc()).limit(max(1, min(limit, 1000)))
        if target is not None:
            query = query.where(audit_log.c.target == target)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AuditEntry(r.id, r.at, r.actor, r.action, r.target, _load(r.before), _load(r.after))
            for r in rows
        ]


def _dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)
