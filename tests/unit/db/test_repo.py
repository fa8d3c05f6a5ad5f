"""Tenants and keys: one test body on SQLite and on the local PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
from sqlalchemy import text, update

from quotagate.auth.api_keys import KeyAuthenticator
from quotagate.db.repo import Database, DatabaseError
from quotagate.db.schema import credits
from quotagate.errors import AuthenticationFailed

SECRET = b"test-secret"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_tenant_and_key_round_trip(db: Database) -> None:
    tenant = await db.create_tenant("acme", "free")
    key_id, plaintext = await db.create_key("acme", SECRET, name="ci", user="alice")
    row = await db.find_key(key_id)
    assert row is not None
    assert (row.tenant_id, row.plan, row.user_id, row.name) == (tenant.id, "free", "alice", "ci")
    assert row.key_hash != plaintext and plaintext not in row.key_hash
    assert [t.name for t in await db.list_tenants()] == ["acme"]
    assert [k.id for k in await db.list_keys("acme")] == [key_id]


async def test_duplicate_tenant_and_unknown_tenant_are_clear_errors(db: Database) -> None:
    await db.create_tenant("acme", "free")
    with pytest.raises(DatabaseError, match="already exists"):
        await db.create_tenant("acme", "pro")
    with pytest.raises(DatabaseError, match="no tenant named 'nobody'"):
        await db.create_key("nobody", SECRET)


async def test_no_plaintext_key_is_stored(db: Database) -> None:
    await db.create_tenant("acme", "free")
    _, plaintext = await db.create_key("acme", SECRET)
    secret_part = plaintext.split("_", 1)[1]
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM qg_api_keys"))).all()
    dump = repr(rows)
    assert plaintext not in dump and secret_part not in dump


async def test_authenticator_caches_then_sees_revocation_after_ttl(db: Database) -> None:
    await db.create_tenant("acme", "pro")
    key_id, plaintext = await db.create_key("acme", SECRET)
    clock = Clock()
    auth = KeyAuthenticator(db, SECRET, ttl=5.0, clock=clock)
    principal = await auth.authenticate(plaintext)
    assert (principal.tenant_name, principal.plan, principal.key_id) == ("acme", "pro", key_id)

    await db.revoke_key(key_id)
    assert (await auth.authenticate(plaintext)).key_id == key_id  # cached for the TTL
    clock.now += 5.1
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(plaintext)
    with pytest.raises(DatabaseError, match="no active key"):
        await db.revoke_key(key_id)


async def test_a_cached_key_is_reloaded_when_its_tenants_first_credit_expires(
    db: Database,
) -> None:
    """A burst credit stops counting when it expires, not up to key_cache_ttl later:
    the key's cache entry lives no longer than the first of its tenant's credits."""
    tenant = await db.create_tenant("acme", "pro")
    _, plaintext = await db.create_key("acme", SECRET)
    await db.add_credit(tenant.id, "topup", "tokens", 100)
    soon = datetime.now(UTC) + timedelta(seconds=30)
    burst = await db.add_credit(tenant.id, "burst", "tokens", 5000, expires_at=soon)
    clock = Clock()
    auth = KeyAuthenticator(db, SECRET, ttl=3600.0, clock=clock)
    grants = (await auth.authenticate(plaintext)).grants
    assert grants is not None and grants["tokens"].extra == 5100

    # The burst expires (moved into the past, as the database's clock will see it).
    async with db.engine.begin() as conn:
        await conn.execute(
            update(credits).where(credits.c.id == burst.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )  # fmt: skip
    clock.now += 29
    grants = (await auth.authenticate(plaintext)).grants
    assert grants is not None and grants["tokens"].extra == 5100, "cached until then"
    clock.now += 2  # past the burst's expiry, far inside the hour's TTL
    grants = (await auth.authenticate(plaintext)).grants
    assert grants is not None and grants["tokens"].extra == 100


async def test_wrong_secret_part_with_a_real_key_id_is_refused(db: Database) -> None:
    await db.create_tenant("acme", "pro")
    _, plaintext = await db.create_key("acme", SECRET)
    auth = KeyAuthenticator(db, SECRET, ttl=5.0)
    forged = plaintext[: plaintext.index("_") + 1] + "A" * 43
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(forged)
    assert (await auth.authenticate(plaintext)).tenant_name == "acme"


async def test_migrations_match_the_schema_and_rerun_cleanly(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from quotagate.db import migrate
    from quotagate.db.migrate import VERSION_TABLE
    from quotagate.db.schema import metadata

    await db.create_schema()  # a second upgrade is a no-op

    def check(conn: object) -> tuple[list[object], str | None]:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})  # type: ignore[arg-type]
        return compare_metadata(context, metadata), migrate.current(conn)  # type: ignore[arg-type]

    async with db.engine.connect() as conn:
        diff, revision = await conn.run_sync(check)
    files = resources.files("quotagate.db.migrations").joinpath("versions").iterdir()
    newest = max(f.name.split("_", 1)[0] for f in files if f.name[:4].isdigit())
    assert diff == [] and revision == newest
