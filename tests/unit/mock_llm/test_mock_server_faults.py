"""Fault injection seen from a client: directives, random rates, the live switch."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import openai
import pytest
import uvicorn

from quotagate.mock_llm import MockSettings

MODEL = "gpt-4"


def _user(text: str) -> list[openai.types.chat.ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` (over HTTP, so no event to wait on) for up to five seconds."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not reached in time")


async def _stats(http: httpx.AsyncClient) -> dict[str, int]:
    stats: dict[str, int] = (await http.get("/_mock/stats")).json()
    return stats


async def test_error_directive_answers_that_status(llm: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await llm.chat.completions.create(model=MODEL, messages=_user("[[mock:error=503]]"))
    assert caught.value.status_code == 503
    assert caught.value.body == {
        "message": "mock injected error 503",
        "type": "server_error",
        "param": None,
        "code": None,
    }


async def test_retry_after_directive_is_a_429_with_the_header(llm: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await llm.chat.completions.create(model=MODEL, messages=_user("[[mock:retry-after=2]]"))
    assert caught.value.response.headers["retry-after"] == "2"


async def test_hang_times_out_and_ends_when_the_client_leaves(
    llm: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.APITimeoutError):
        await llm.with_options(timeout=0.3).chat.completions.create(
            model=MODEL, messages=_user("[[mock:hang]]")
        )
    assert (await _stats(http))["hangs"] == 1

    async def released() -> bool:
        return (await _stats(http))["in_flight"] == 0

    await _until(released)


async def test_drop_cuts_the_stream_before_done(llm: openai.AsyncOpenAI) -> None:
    stream = await llm.chat.completions.create(
        model=MODEL, messages=_user("[[mock:drop]] [[mock:tokens=10]]"), stream=True
    )
    received: list[str] = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) == 1 + 5  # the role chunk, then half of the tokens


async def test_drop_truncates_a_whole_answer(llm: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await llm.chat.completions.create(model=MODEL, messages=_user("[[mock:drop]]"))


async def test_ttft_directive_delays_the_answer(llm: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    await llm.chat.completions.create(model=MODEL, messages=_user("[[mock:ttft=150]]"))
    assert time.monotonic() - started >= 0.15


async def test_token_rate_paces_the_stream(
    llm: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await http.post("/_mock/faults", json={"ttft_ms": 100, "tokens_per_second": 100})
    started = time.monotonic()  # before the request: headers may precede the first token
    stream = await llm.chat.completions.create(
        model=MODEL, messages=_user("[[mock:tokens=11]]"), stream=True
    )
    arrivals: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 11
    assert arrivals[0] >= 0.1  # time to first token
    assert arrivals[-1] - arrivals[0] >= 10 * 0.01 * 0.9  # ten gaps at 100 tokens/s


async def test_live_fault_switch(
    llm: openai.AsyncOpenAI, http: httpx.AsyncClient, mock_settings: MockSettings
) -> None:
    reply = await http.post("/_mock/faults", json={"error_rate": 1.0, "error_status": 502})
    assert reply.json()["error_rate"] == 1.0
    assert mock_settings.error_status == 502
    with pytest.raises(openai.APIStatusError) as caught:
        await llm.chat.completions.create(model=MODEL, messages=_user("hi"))
    assert caught.value.status_code == 502
    await http.post("/_mock/faults", json={"error_rate": 0})
    assert (await http.get("/_mock/faults")).json()["error_rate"] == 0.0
    await llm.chat.completions.create(model=MODEL, messages=_user("hi"))
    stats = await _stats(http)
    assert (stats["requests"], stats["errors"], stats["in_flight"]) == (2, 1, 0)


@pytest.mark.parametrize(
    "update", [{"error_rate": 2}, {"error_status": 200}, {"ttft_ms": -1}, {"port": 1}]
)
async def test_invalid_fault_updates_change_nothing(
    http: httpx.AsyncClient, update: dict[str, object]
) -> None:
    before = (await http.get("/_mock/faults")).json()
    reply = await http.post("/_mock/faults", json={"hang_rate": 0.5, **update})
    assert reply.status_code == 400
    assert (await http.get("/_mock/faults")).json() == before


async def test_shutdown_does_not_wait_forever_on_a_hung_request(
    mock_server: uvicorn.Server, http: httpx.AsyncClient
) -> None:
    body = {"model": MODEL, "messages": _user("[[mock:hang]]")}
    hung = asyncio.create_task(http.post("/v1/chat/completions", json=body))

    async def hanging() -> bool:
        return (await _stats(http))["hangs"] == 1

    await _until(hanging)
    mock_server.should_exit = True
    # uvicorn cancels the hung task after its grace period and answers a bare 500.
    [outcome] = await asyncio.wait_for(asyncio.gather(hung, return_exceptions=True), timeout=5)
    if not isinstance(outcome, httpx.HTTPError):
        assert isinstance(outcome, httpx.Response) and outcome.status_code == 500


async def test_random_rates_apply_to_embeddings_too(
    llm: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await http.post("/_mock/faults", json={"drop_rate": 1.0})
    with pytest.raises(openai.APIConnectionError):
        await llm.embeddings.create(model="text-embedding-3-small", input="x")
    await http.post("/_mock/faults", json={"drop_rate": 0.0, "error_rate": 1.0})
    with pytest.raises(openai.InternalServerError):
        await llm.embeddings.create(model="text-embedding-3-small", input="x")
    stats = await _stats(http)
    assert (stats["drops"], stats["errors"], stats["requests"]) == (1, 1, 2)
