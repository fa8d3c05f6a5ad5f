"""One store per backend: memory, the shared Redis (unique prefix, its keys dropped when
the session ends), a private Sentinel and Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from harness import SHARED_REDIS, redis_prefix
from quotagate.store.base import LimitStore
from quotagate.store.memory import MemoryStore
from quotagate.store.redis import RedisStore
from redis_servers import RedisSentinel, start_sentinel


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    started = start_sentinel(tmp_path_factory.mktemp("sentinel"))
    yield started
    started.stop()


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = SHARED_REDIS if request.param == "redis" else request.getfixturevalue(request.param).url
    backend = RedisStore(url, prefix=redis_prefix(), timeout=2.0)  # dropped at session end
    yield backend
    await backend.close()
