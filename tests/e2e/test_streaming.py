"""Server-sent event streams through the gateway: same answer, relayed as produced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from e2e_clients import CHAT_MODEL, IssuedKey, KeyIssuer, async_sdk, messages, sdk

from harness import Gateway, policy, start_mock

TOKENS = 40
PROMPT = f"[[mock:tokens={TOKENS}]] tell me about gateways"


def streamed_text(chunks: list[openai.types.chat.ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_streamed_content_equals_the_non_streamed_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=messages(PROMPT))
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=messages(PROMPT),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert streamed_text(chunks) == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == TOKENS
    assert chunks[-1].usage == whole.usage


async def test_async_client_streams_the_same_answer(gateway: Gateway, pro_key: IssuedKey) -> None:
    async with async_sdk(gateway, pro_key.key) as client:
        whole = await client.chat.completions.create(model=CHAT_MODEL, messages=messages(PROMPT))
        stream = await client.chat.completions.create(
            model=CHAT_MODEL, messages=messages(PROMPT), stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert streamed_text(chunks) == whole.choices[0].message.content


def test_streamed_text_completion_equals_the_non_streamed_one(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=CHAT_MODEL, prompt=PROMPT)
    stream = client.completions.create(model=CHAT_MODEL, prompt=PROMPT, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == (
        whole.choices[0].text
    )


def test_stream_response_carries_gateway_headers(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=messages(PROMPT), stream=True
    ) as response:
        headers = response.headers
        body = b"".join(response.iter_bytes())
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-request-id"]
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert body.rstrip().endswith(b"data: [DONE]")


@pytest.fixture(scope="module")
def paced_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """A gateway in front of a mock that produces 50 tokens a second."""
    tmp: Path = tmp_path_factory.mktemp("paced")
    paced_mock = start_mock(tmp, "--tokens-per-second", "50")
    gateway = Gateway(tmp / "gateway", policy(paced_mock.base_url + "/v1"))
    try:
        gateway.start()
        with sdk(gateway, KeyIssuer(gateway).issue("pro").key) as client:
            yield client
    finally:
        gateway.stop()
        paced_mock.stop()


def test_stream_chunks_arrive_as_the_upstream_produces_them(paced_client: openai.OpenAI) -> None:
    stream = paced_client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("[[mock:tokens=25]] pace me"), stream=True
    )
    arrivals = [
        time.monotonic() for chunk in stream if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(arrivals) == 25
    # 25 tokens at 50/s take ~480ms to produce. Relayed as produced, they arrive spread
    # over that time; buffered anywhere on the way, they would arrive all at once.
    assert arrivals[0] < arrivals[-1] - 0.3
    assert arrivals[0] < arrivals[len(arrivals) // 2] - 0.15
