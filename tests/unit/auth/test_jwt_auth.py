"""Token → principal: tenants from the database or the IdP, plans from claims, and the
verified-token cache bounded by both its TTL and the token's own exp."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import update

from quotagate.auth.jwt_auth import JwtAuthenticator, derived_id
from quotagate.auth.jwt_verify import ClaimPaths, InvalidToken, JwtVerifier, TrustedIssuer
from quotagate.db.repo import Database
from quotagate.db.schema import credits
from quotagate.errors import PermissionDenied

SECRET = b"a-shared-secret-of-at-least-32-bytes!!"
ISS = "https://idp.example.com"
PLANS = {"free", "pro"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingVerifier(JwtVerifier):
    calls = 0

    async def verify(self, token: str) -> tuple[TrustedIssuer, dict[str, Any]]:
        self.calls += 1
        return await super().verify(token)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/qg.db")
    await database.create_schema()
    yield database
    await database.close()


def authenticator(db: Database, clock: Clock, **issuer: Any) -> JwtAuthenticator:
    fields: dict[str, Any] = {
        "issuer": ISS, "audience": None, "algorithms": frozenset({"HS256"}),
        "claims": ClaimPaths("org", "email", "plan", "scope"), "leeway": 0.0,
        "hs256_secret": SECRET,
    }  # fmt: skip
    fields.update(issuer)
    verifier = CountingVerifier([TrustedIssuer(**fields)], 8192)
    wall = time.time()
    return JwtAuthenticator(verifier, db, ttl=5.0, clock=clock, wall_clock=lambda: wall)


def token(ttl: int = 60, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "sub": "s1", "org": "acme", "iat": now, "exp": now + ttl, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, "HS256")


async def test_a_tenant_only_the_idp_knows_gets_a_derived_id(db: Database) -> None:
    auth = authenticator(db, Clock())
    principal = await auth.authenticate(token(plan="pro", email="a@x", scope="read write"), PLANS)
    assert principal.tenant_id == derived_id(ISS, "acme") and principal.tenant_name == "acme"
    assert principal.key_id == derived_id(ISS, "s1") and principal.user == "a@x"
    assert principal.plan == "pro" and principal.scopes == ("read", "write")


async def test_a_database_tenant_lends_its_id_zone_and_plan(db: Database) -> None:
    row = await db.create_tenant("acme", "free", "Europe/Berlin", 15)
    principal = await authenticator(db, Clock()).authenticate(token(), PLANS)
    assert principal.tenant_id == row.id and principal.plan == "free"
    assert principal.zone == ("Europe/Berlin", 15)


async def test_no_plan_anywhere_is_plan_not_found_unless_a_default_is_set(db: Database) -> None:
    with pytest.raises(PermissionDenied):
        await authenticator(db, Clock()).authenticate(token(), PLANS)
    auth = authenticator(db, Clock(), default_plan="free")
    assert (await auth.authenticate(token(), PLANS)).plan == "free"


async def test_the_builtin_issuer_refuses_an_unknown_tenant(db: Database) -> None:
    with pytest.raises(InvalidToken, match="tenant"):
        await authenticator(db, Clock(), builtin=True).authenticate(token(plan="pro"), PLANS)


async def test_a_verified_token_is_cached_for_the_ttl(db: Database) -> None:
    clock = Clock()
    auth = authenticator(db, clock)
    issued = token(plan="pro")
    for _ in range(3):
        await auth.authenticate(issued, PLANS)
    assert auth.verifier.calls == 1  # type: ignore[attr-defined]
    clock.now += 5.01
    await auth.authenticate(issued, PLANS)
    assert auth.verifier.calls == 2  # type: ignore[attr-defined]


async def test_the_cache_never_outlives_the_tokens_exp(db: Database) -> None:
    clock = Clock()
    auth = authenticator(db, clock)
    short = token(ttl=2, plan="pro")
    await auth.authenticate(short, PLANS)
    clock.now += 2.01  # within the 5 s TTL, past the token's exp
    await auth.authenticate(short, PLANS)
    assert auth.verifier.calls == 2  # type: ignore[attr-defined]


async def test_a_tenants_credits_count_until_the_first_expires_not_a_ttl_later(
    db: Database,
) -> None:
    """The tenant and verified-token caches live no longer than the first of the
    tenant's credits: an expired burst credit stops counting when it expires."""
    row = await db.create_tenant("acme", "pro")
    soon = datetime.now(UTC) + timedelta(seconds=3)
    burst = await db.add_credit(row.id, "burst", "tokens", 5000, expires_at=soon)
    clock = Clock()
    auth = authenticator(db, clock)  # TTL 5 s
    issued = token(plan="pro")
    principal = await auth.authenticate(issued, PLANS)
    assert principal.grants is not None and principal.grants["tokens"].extra == 5000
    async with db.engine.begin() as conn:  # the burst expires, as the database sees it
        await conn.execute(
            update(credits).where(credits.c.id == burst.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )  # fmt: skip
    clock.now += 3.5  # past the burst's expiry, inside the 5 s TTL
    assert (await auth.authenticate(issued, PLANS)).grants is None
