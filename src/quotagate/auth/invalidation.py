"""Cross-instance cache invalidation: a revoked key stops on every instance at once.

Each instance caches keys for ``auth.key_cache_ttl``. A change (a revoked or rotated
key, a suspended tenant, a credit) is published on the store's Redis as the list of
affected key ids; every instance subscribed drops those entries. The subscription
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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)
CHANNEL = "invalidate:keys"
RETRY_AFTER = 1.0  # seconds between reconnection attempts
START_WAIT = 2.0  # seconds start() waits for the subscription


def _client(url: str) -> Redis:
    """A plain client with no read timeout, on the server (or first node) of ``url``.
    redis-py is imported here, not at the top: the in-process store never needs it
    (and importing it pulls in OpenTelemetry when that is installed)."""
    from redis.asyncio import Redis
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    hosts = [h for h in parts.netloc.rsplit("@", 1)[-1].split(",") if h]
    host, _, port = hosts[0].rpartition(":")
    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "password": parts.password}
    if parts.scheme == "redis+sentinel":
        service = parts.path.strip("/").split("/")[0] or "mymaster"
        sentinels = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts]
        master: Redis = Sentinel(sentinels, **options).master_for(service)  # type: ignore[no-untyped-call]
        return master
    if parts.scheme == "redis+cluster":
        return Redis(host=host, port=int(port or 6379), **options)
    return Redis.from_url(url, **options)


class Invalidation:
    def __init__(
        self, store_url: str, prefix: str, forget: Callable[[Sequence[str]], None]
    ) -> None:
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

    async def publish(self, key_ids: Sequence[str]) -> None:
        """Forget here at once, then tell the others (best effort: the TTL backs it)."""
        if not key_ids:
            return
        self._forget(key_ids)
        if self._publisher is None:
            return
        try:
            await self._publisher.publish(self._channel, orjson.dumps(list(key_ids)))
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
        try:
            ids = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(ids, list):
            self._forget([i for i in ids if isinstance(i, str)])


async def publish_once(store_url: str, prefix: str, key_ids: Sequence[str]) -> bool:
    """For the CLI: tell running gateways (if they share a Redis) to forget keys;
    False when Redis could not be told (the gateways' key cache TTL still applies)."""
    if store_url.startswith("memory://") or not key_ids:
        return True
    client = _client(store_url)
    try:
        await client.publish(prefix + CHANNEL, orjson.dumps(list(key_ids)))
    except Exception as exc:  # the driver's errors vary
        log.warning("could not publish a key invalidation: %s", type(exc).__name__)
        return False
    finally:
        await client.aclose()
    return True
