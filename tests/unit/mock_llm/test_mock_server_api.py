"""The mock driven over real HTTP by the official OpenAI SDK."""

import struct

import httpx
import openai

from quotagate.mock_llm import count_tokens

MODEL = "gpt-3.5-turbo"


def _user(text: str) -> list[openai.types.chat.ChatCompletionMessageParam]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


async def test_chat_completion(llm: openai.AsyncOpenAI) -> None:
    reply = await llm.chat.completions.create(model="gpt-4", messages=_user("hello there"))
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-4"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == (2 + 3) + (2 + 3) + 3
    assert reply.usage.completion_tokens == 16 == count_tokens(choice.message.content or "")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 16


async def test_chat_is_deterministic_and_honours_token_directive(llm: openai.AsyncOpenAI) -> None:
    first = await llm.chat.completions.create(model=MODEL, messages=_user("[[mock:tokens=30]]"))
    again = await llm.chat.completions.create(model=MODEL, messages=_user("[[mock:tokens=30]]"))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert count_tokens(first.choices[0].message.content or "") == 30
    capped = await llm.chat.completions.create(
        model=MODEL, messages=_user("[[mock:tokens=30]]"), max_tokens=4
    )
    assert capped.usage is not None and capped.usage.completion_tokens == 4
    assert capped.choices[0].finish_reason == "length"


async def _stream_chat(
    llm: openai.AsyncOpenAI, text: str, include_usage: bool
) -> tuple[str, list[openai.types.chat.ChatCompletionChunk]]:
    stream = await llm.chat.completions.create(
        model=MODEL,
        messages=_user(text),
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = [chunk async for chunk in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return content, chunks


async def test_stream_matches_the_whole_answer(llm: openai.AsyncOpenAI) -> None:
    whole = await llm.chat.completions.create(model=MODEL, messages=_user("stream me"))
    content, chunks = await _stream_chat(llm, "stream me", include_usage=True)
    assert content == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.object for c in chunks] == ["chat.completion.chunk"] * len(chunks)
    assert len(chunks) == 1 + 16 + 1 + 1  # role, tokens, finish, usage
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage


async def test_stream_has_no_usage_unless_asked(llm: openai.AsyncOpenAI) -> None:
    _, chunks = await _stream_chat(llm, "stream me", include_usage=False)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_text_completion_whole_and_streamed(llm: openai.AsyncOpenAI) -> None:
    whole = await llm.completions.create(model=MODEL, prompt="Once upon", max_tokens=5)
    assert whole.object == "text_completion"
    assert count_tokens(whole.choices[0].text) == 5
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.prompt_tokens == 2
    stream = await llm.completions.create(
        model=MODEL,
        prompt="Once upon",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage


async def test_embeddings_in_both_encodings(llm: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 by default and decodes it back to floats.
    default = await llm.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    floats = await llm.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert [len(item.embedding) for item in floats.data] == [8, 8]
    for decoded, plain in zip(default.data, floats.data, strict=True):
        expected = struct.unpack("<8f", struct.pack("<8f", *plain.embedding))
        assert tuple(decoded.embedding) == expected
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 3
    wide = await llm.embeddings.create(model="text-embedding-3-small", input="a", dimensions=32)
    assert len(wide.data[0].embedding) == 32


async def test_models_list_the_configured_models(llm: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in llm.models.list()]
    assert models == ["gpt-3.5-turbo", "gpt-4", "text-embedding-3-small"]


async def test_health(http: httpx.AsyncClient) -> None:
    reply = await http.get("/healthz")
    assert (reply.status_code, reply.json()) == (200, {"status": "ok"})


async def test_bad_json_unknown_path_and_wrong_method(http: httpx.AsyncClient) -> None:
    bad = await http.post("/v1/chat/completions", content=b"{nope")
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "message": "the request body is not valid JSON",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    missing = await http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong = await http.delete("/v1/chat/completions")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


async def test_request_ids_are_echoed_and_the_request_recorded(
    llm: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    raw = await llm.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=_user("hi"),
        extra_headers={"X-Request-ID": "req-42", "X-Forwarded-By": "gateway"},
    )
    assert raw.headers["x-upstream-saw-request-id"] == "req-42"
    assert raw.headers["x-mock-request-id"].startswith("mock-")
    recorded = (await http.get("/_mock/last-request")).json()
    assert recorded["path"] == "/v1/chat/completions"
    assert recorded["headers"]["x-forwarded-by"] == "gateway"
    assert recorded["headers"]["authorization"] == "Bearer x"
    assert recorded["body"]["messages"] == _user("hi")


async def test_several_choices_stream_like_their_whole_answers(llm: openai.AsyncOpenAI) -> None:
    whole = await llm.chat.completions.create(model=MODEL, messages=_user("two please"), n=2)
    stream = await llm.chat.completions.create(
        model=MODEL, messages=_user("two please"), n=2, stream=True
    )
    streamed = ["", ""]
    async for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [choice.message.content for choice in whole.choices]
    assert streamed[0] != streamed[1]
