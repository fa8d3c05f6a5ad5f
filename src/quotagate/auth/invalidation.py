"""Cross-instance cache invalidation: a change reaches every instance at once.

Each instance caches who a credential is for ``auth.key_cache_ttl``: API keys, and for
JWTs the tenant (row, status, credits), the OAuth client and the verified token. A
change (a revoked or rotated key, a suspended tenant, a credit or rate override, a
revoked client) is published on the store's Redis as what went stale: key ids, tenant
names, client ids; every instance subscribed drops those entries, whichever kind of
credential cached them. The subscription
runs on its own connection (no command timeout: it blocks reading), reconnects after
a failure, and the cache TTL stays the backstop for a message missed while it was
down. With ``memory://`` there is one instance: the change is applied locally only.
In a Redis Cluster, classic PUBLISH reaches subscribers on every node, so one node is
enough to listen on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)
CHANNEL = "invalidate:keys"


@dataclass(frozen=True, slots=True)
class Stale:
    """What a change made stale in the credential caches."""

    keys: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()  # by name: API-key and JWT principals both carry it
    clients: tuple[str, ...] = ()
    # Not a credential: deployments ("<model>\n<deployment>") whose circuit an instance
    # opened, so that every instance stops sending to them (routing.share_health).
    circuits: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keys or self.tenants or self.clients or self.circuits)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "keys": self.keys, "tenants": self.tenants, "clients": self.clients,
                "circuits": self.circuits,
            }
        )  # fmt: skip

    @classmethod
    def from_json(cls, data: bytes) -> Stale | None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None

        def ids(name: str) -> tuple[str, ...]:
            value = doc.get(name)
            return tuple(i for i in value if isinstance(i, str)) if isinstance(value, list) else ()

        return cls(ids("keys"), ids("tenants"), ids("clients"), ids("circuits"))


RETRY_AFTER = 1.0  # seconds between reconnection attempts
START_WAIT = 2.0  # seconds start() waits for the subscription


def _client(url: str) -> Redis:
    """A plain client with no read timeout, on the server (or first node) of ``url``.
    redis-py is imported here, not at the top: the in-process store never needs it
    (and importing it pulls in OpenTelemetry when that is installed)."""
    from redis.asyncio import Redis
    from redis.asyncio.sentinel import Sentinel

    from quotagate.store.redis import hosts, sentinel_service

    parts = urlsplit(url)
    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "password": parts.password}
    if parts.scheme == "redis+sentinel":
        sentinel = Sentinel(hosts(parts.netloc), **options)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(sentinel_service(parts.path))
        return master
    if parts.scheme == "redis+cluster":
        host, port = hosts(parts.netloc)[0]
        return Redis(host=host, port=port, **options)
    return Redis.from_url(url, **options)


class Invalidation:
    def __init__(self, store_url: str, prefix: str, forget: Callable[[Stale], None]) -> None:
        self._url = None if store_url.startswith("memory://") else store_url
        self._channel = prefix + CHANNEL
        self._forget = forget
        self._task: asyncio.Task[None] | None = None
        self._publisher: Redis | None = None
        self.subscribed = asyncio.Event()  # set while the subscription is live

    async def start(self) -> None:
        if self._url is not None:
            self._publisher = _client(self._url)
            self._task = asyncio.create_task(self._listen(), name="key-invalidation")
            # Serve subscribed when Redis is up; never hold start-up for long when not.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.subscribed.wait(), START_WAIT)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._publisher is not None:
            await self._publisher.aclose()

    async def publish(self, stale: Stale) -> None:
        """Forget here at once, then tell the others (best effort: the TTL backs it)."""
        if not stale:
            return
        self._forget(stale)
        if self._publisher is None:
            return
        try:
            await self._publisher.publish(self._channel, stale.to_json())
        except Exception as exc:  # the driver's errors vary; the TTL still bounds it
            log.warning("could not publish a key invalidation: %s", type(exc).__name__)

    async def _listen(self) -> None:
        assert self._url is not None
        warned = False
        while True:
            client = _client(self._url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.subscribed.set()
                    warned = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not warned:  # once per outage, not once per retry
                    log.warning("key invalidation channel down: %s", type(exc).__name__)
                    warned = True
            finally:
                self.subscribed.clear()
                await client.aclose()
            await asyncio.sleep(RETRY_AFTER)

    def _receive(self, data: bytes) -> None:
        stale = Stale.from_json(data)
        if stale:
            self._forget(stale)


async def publish_once(store_url: str, prefix: str, stale: Stale) -> bool:
    """For the CLI: tell running gateways (if they share a Redis) what went stale;
    False when Redis could not be told (the gateways' key cache TTL still applies)."""
    if store_url.startswith("memory://") or not stale:
        return True
    client = _client(store_url)
    try:
        await client.publish(prefix + CHANNEL, stale.to_json())
    except Exception as exc:  # the driver's errors vary
        log.warning("could not publish a key invalidation: %s", type(exc).__name__)
        return False
    finally:
        await client.aclose()
    return True
