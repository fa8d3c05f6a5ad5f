"""Authenticate API keys against the database, with an in-process cache.

A hot key costs one HMAC and a dict lookup, no query. The cache TTL bounds how long a
revoked key may still pass on a running instance. Unknown key ids are cached too (as
misses) so a flood of made-up keys costs one query per id, and the cache is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from quotagate.auth.invalidation import Stale
from quotagate.auth.keys import parse_key_id, verify_key
from quotagate.auth.principal import Grant, Principal
from quotagate.db.repo import Database, KeyRow
from quotagate.errors import AuthenticationFailed, ServiceUnavailable

log = logging.getLogger(__name__)
_MAX_ENTRIES = 100_000


@dataclass(slots=True, frozen=True)
class _Entry:
    key_hash: str | None  # None: no usable key with this id (unknown, revoked, suspended)
    principal: Principal | None
    expires_at: float
    tenant: str | None  # the key's tenant (by name) when it has one, usable or not


def _principal(row: KeyRow, grants: dict[str, Grant] | None) -> Principal:
    return Principal(
        row.tenant_id, row.tenant_name, row.id, row.user_id or row.id, row.plan,
        (row.timezone, row.billing_day), grants, bypass=row.bypass_limits,
    )  # fmt: skip


def _usable(row: KeyRow | None) -> bool:
    return row is not None and _seconds_left(row) > 0 and row.tenant_status == "active"


def _seconds_left(row: KeyRow) -> float:
    """Until the key stops working: a key being rotated is revoked at a future time."""
    if row.revoked_at is None:
        return float("inf")
    revoked = row.revoked_at
    if revoked.tzinfo is None:
        revoked = revoked.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return (revoked - datetime.now(UTC)).total_seconds()


class KeyAuthenticator:
    def __init__(
        self,
        db: Database,
        secret: bytes,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._secret = secret
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        # One query per key id at a time: a burst on a cold key waits for the first.
        self._loading: dict[str, asyncio.Future[_Entry]] = {}

    async def authenticate(self, plaintext: str) -> Principal:
        key_id = parse_key_id(plaintext)
        if key_id is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        entry = self._cache.get(key_id)
        if entry is None or entry.expires_at < self._clock():
            entry = await self._load(key_id)
        if entry.key_hash is None or entry.principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if not verify_key(self._secret, plaintext, entry.key_hash):
            raise AuthenticationFailed("Incorrect API key provided.")
        return entry.principal

    async def _load(self, key_id: str) -> _Entry:
        pending = self._loading.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = future
        try:
            entry = await self._query(key_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when alone
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._loading[key_id]

    async def _query(self, key_id: str) -> _Entry:
        try:
            row = await self._db.find_key(key_id)
            # Credits ride along with the key: a new one applies within the cache TTL.
            grants, holds = (
                await self._db.grants(row.tenant_id) if row and _usable(row) else (None, 0.0)
            )
        except Exception as exc:  # the driver's errors vary; all mean "cannot check now"
            log.warning("key lookup failed: %s", type(exc).__name__)
            raise ServiceUnavailable("Cannot verify the API key right now.") from exc
        if row is not None and _usable(row):
            lifetime = min(self.ttl, _seconds_left(row), holds)
            principal = _principal(row, grants)
            entry = _Entry(row.key_hash, principal, self._clock() + lifetime, row.tenant_name)
        else:
            tenant = row.tenant_name if row is not None else None
            entry = _Entry(None, None, self._clock() + self.ttl, tenant)
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        self._cache[key_id] = entry
        return entry

    def forget(self, stale: Stale) -> None:
        """Drop what a change made stale: those keys, and every key of those tenants
        (refused ones too: a tenant made active again must not wait out the TTL)."""
        for key_id in stale.keys:
            self._cache.pop(key_id, None)
        if stale.tenants:
            tenants = set(stale.tenants)
            for key_id, entry in list(self._cache.items()):
                if entry.tenant in tenants:
                    del self._cache[key_id]
