"""Shared fixtures: a mock LLM per session, gateways per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Process, start_mock
from redis_servers import RedisCluster, start_cluster


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
