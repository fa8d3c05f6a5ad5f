"""One store per backend: memory, the shared Redis (unique prefix), a private Cluster."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from quotagate.store.base import LimitStore
from quotagate.store.memory import MemoryStore
from quotagate.store.redis import RedisStore
from redis_servers import RedisSentinel, start_sentinel

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def drop_prefix(prefix: str) -> None:
    with redis.Redis.from_url(SHARED_REDIS) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    started = start_sentinel(tmp_path_factory.mktemp("sentinel"))
    yield started
    started.stop()


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    prefix = f"qgtest:{secrets.token_hex(6)}:"
    if request.param == "memory":
        yield MemoryStore()
        return
    url = SHARED_REDIS if request.param == "redis" else request.getfixturevalue(request.param).url
    backend = RedisStore(url, prefix=prefix, timeout=2.0)
    yield backend
    await backend.close()
    if request.param == "redis":
        drop_prefix(prefix)
