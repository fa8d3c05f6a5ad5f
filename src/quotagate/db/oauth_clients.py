"""OAuth clients of the built-in issuer (mixed into ``Database``).

A client secret is shown once, at creation, and stored as an HMAC-SHA256 under the
server secret, exactly like an API key (``auth.keys``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from quotagate.auth.keys import hash_key
from quotagate.db.schema import oauth_clients, tenants

CLIENT_PREFIX = "qgc_"
SECRET_PREFIX = "qgs_"


@dataclass(slots=True, frozen=True)
class ClientRow:
    id: str
    tenant_id: str
    tenant_name: str
    tenant_plan: str
    tenant_status: str
    name: str | None
    plan: str | None
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def token_plan(self) -> str:
        """The plan its tokens carry: its own, else its tenant's."""
        return self.plan or self.tenant_plan


def _query() -> Any:
    return select(
        oauth_clients.c.id, oauth_clients.c.tenant_id, tenants.c.name.label("tenant_name"),
        tenants.c.plan.label("tenant_plan"), tenants.c.status.label("tenant_status"),
        oauth_clients.c.name, oauth_clients.c.plan, oauth_clients.c.secret_hash,
        oauth_clients.c.created_at, oauth_clients.c.revoked_at,
    ).join(tenants, tenants.c.id == oauth_clients.c.tenant_id)  # fmt: skip


class OAuthClientStore:
    engine: AsyncEngine

    async def create_client(
        self, tenant_id: str, server_secret: bytes, plan: str | None, name: str | None
    ) -> tuple[str, str]:
        """A new client of ``tenant_id``: ``(client_id, client_secret)``, shown once."""
        client_id = CLIENT_PREFIX + secrets.token_hex(8)
        client_secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await conn.execute(
                oauth_clients.insert().values(
                    id=client_id, tenant_id=tenant_id, name=name, plan=plan,
                    secret_hash=hash_key(server_secret, client_secret),
                    created_at=datetime.now(UTC),
                )
            )  # fmt: skip
        return client_id, client_secret

    async def find_client(self, client_id: str) -> ClientRow | None:
        async with self.engine.connect() as conn:
            result = await conn.execute(_query().where(oauth_clients.c.id == client_id))
            row = result.first()
        return None if row is None else ClientRow(**row._mapping)

    async def list_clients(self, tenant_name: str | None = None) -> list[ClientRow]:
        query = _query()
        if tenant_name is not None:
            query = query.where(tenants.c.name == tenant_name)
        async with self.engine.connect() as conn:
            result = await conn.execute(query.order_by(oauth_clients.c.created_at))
            return [ClientRow(**r._mapping) for r in result]

    async def revoke_client(self, client_id: str) -> bool:
        """False when there is no active client with that id."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(oauth_clients)
                .where(oauth_clients.c.id == client_id, oauth_clients.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(result.rowcount)
