"""Shared fixtures: a mock LLM per session, a private Redis Cluster, a database."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from harness import Process, drop_redis_prefixes, start_mock
from log_secrets import leaks
from quotagate.db.repo import Database
from redis_servers import RedisCluster, start_cluster


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every gateway and mock in the suite logs at DEBUG into the session's temporary
    directory; once the session is over, none of those logs may hold a key, token,
    client secret or bearer credential (tests send them in every header)."""
    yield
    found = leaks(tmp_path_factory.getbasetemp())
    assert not found, "secrets in the suite's logs:\n" + "\n".join(found[:20])


@pytest.fixture(scope="session", autouse=True)
def shared_redis_left_clean() -> Iterator[None]:
    """Keys a test left under its ``redis_prefix`` in the machine's Redis (counters
    with long periods outlive the test) go when the session ends."""
    yield
    drop_redis_prefixes()


@pytest.fixture(scope="session")
def mock_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_mock(tmp_path_factory.mktemp("mock"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def upstream(mock_llm: Process) -> str:
    """The mock LLM's OpenAI base URL."""
    return mock_llm.base_url + "/v1"


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A private 3-master Redis Cluster for the whole session."""
    started = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield started
    started.stop()


PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database: a SQLite file, or a schema of its own on the local
    PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path}/qg.db")
    else:
        database = Database(PG_URL, schema=f"qg_test_{secrets.token_hex(6)}")
    await database.create_schema()
    yield database
    if database.schema:
        async with database.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{database.schema}" CASCADE'))
    await database.close()
