"""OAuth clients in SQLite and PostgreSQL: created with a hashed secret, found, listed,
revoked."""

from __future__ import annotations

from sqlalchemy import select

from quotagate.auth.keys import verify_key
from quotagate.db.repo import Database
from quotagate.db.schema import oauth_clients

SECRET = b"server-secret"


async def test_a_client_is_stored_with_its_secret_hashed(db: Database) -> None:
    tenant = await db.create_tenant("acme", "free")
    client_id, secret = await db.create_client(tenant.id, SECRET, plan="pro", name="ci")
    row = await db.find_client(client_id)
    assert row is not None and row.tenant_name == "acme" and row.token_plan == "pro"
    assert verify_key(SECRET, secret, row.secret_hash)
    async with db.engine.connect() as conn:
        stored = [tuple(r) for r in await conn.execute(select(oauth_clients))]
    assert stored and all(secret not in str(value) for r in stored for value in r)


async def test_without_a_plan_its_tokens_carry_the_tenants(db: Database) -> None:
    tenant = await db.create_tenant("acme", "free")
    client_id, _ = await db.create_client(tenant.id, SECRET, plan=None, name=None)
    row = await db.find_client(client_id)
    assert row is not None and row.token_plan == "free"


async def test_clients_are_listed_and_revoked_once(db: Database) -> None:
    tenant = await db.create_tenant("acme", "free")
    other = await db.create_tenant("other", "pro")
    client_id, _ = await db.create_client(tenant.id, SECRET, None, None)
    await db.create_client(other.id, SECRET, None, None)
    assert [c.id for c in await db.list_clients("acme")] == [client_id]
    assert len(await db.list_clients()) == 2
    assert await db.revoke_client(client_id)
    assert not await db.revoke_client(client_id)
    row = await db.find_client(client_id)
    assert row is not None and row.revoked_at is not None
    assert await db.find_client("qgc_unknown") is None
