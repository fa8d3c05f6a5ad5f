"""A real mock upstream on a free port, served inside the test's own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import uvicorn

from quotagate.mock_llm import MockSettings, make_server


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not server.started:
        if task.done():
            task.result()  # surfaces a failed start-up
        await asyncio.sleep(0.005)


@pytest.fixture
def mock_settings() -> MockSettings:
    return MockSettings(port=0)  # 0: the OS picks a free port


@pytest.fixture
async def mock_server(mock_settings: MockSettings) -> AsyncIterator[uvicorn.Server]:
    server = make_server(mock_settings)
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(_wait_started(server, task), timeout=10)
    yield server
    server.should_exit = True
    await asyncio.wait_for(task, timeout=10)


@pytest.fixture
def mock_base_url(mock_server: uvicorn.Server) -> str:
    port = mock_server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def llm(mock_base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"{mock_base_url}/v1", api_key="x", max_retries=0, timeout=10
    )
    yield client
    await client.close()


@pytest.fixture
async def http(mock_base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock_base_url, timeout=10) as client:
        yield client
