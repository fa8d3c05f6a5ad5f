"""Token estimates (with their measured error) and the SSE usage scanner."""

from __future__ import annotations

import orjson
import pytest

from quotagate.budget.estimate import prompt_tokens
from quotagate.mock_llm.tokenizer import count_tokens
from quotagate.upstream.usage import StreamUsage, Usage, usage_of

SAMPLES = [
    "Hello, how are you today?",
    "Summarise the following text in three sentences: " + "the quick brown fox " * 40,
    "Write a Python function that returns the nth Fibonacci number, with type hints.",
    "Translate to German: The gateway decides who is calling and what they may use.",
    "Q: What is 17 * 23? A:",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_prompt_estimate_is_within_a_factor_of_two_of_the_mock_tokenizer(text: str) -> None:
    payload = {"messages": [{"role": "user", "content": text}]}
    estimate = prompt_tokens(payload, "chat.completions")
    actual = count_tokens(text) + 3 + 3  # the mock's chat accounting
    assert 0.5 <= estimate / actual <= 2.0, (estimate, actual)


def test_prompt_estimate_counts_every_message_and_text_part() -> None:
    one = prompt_tokens(
        {"messages": [{"role": "user", "content": "abcd" * 10}]}, "chat.completions"
    )
    parts = [{"type": "text", "text": "abcd" * 10}, {"type": "image_url", "image_url": {}}]
    two = prompt_tokens(
        {"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": parts}]},
        "chat.completions",
    )
    assert one == 3 + 3 + 10 and two == 3 + 3 + 1 + 3 + 10
    assert prompt_tokens({"prompt": ["abcd", "abcdabcd"]}, "completions") == 3
    assert prompt_tokens({"input": "abcdabcda"}, "embeddings") == 3


def test_usage_of_a_json_answer() -> None:
    assert usage_of(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 7}}') == Usage(5, 7)
    assert usage_of(b'{"usage": {"total_tokens": 9, "prompt_tokens": 4}}') == Usage(4, 5)
    assert usage_of(b'{"usage": {"total_tokens": 9}}') == Usage(9, 0)  # embeddings
    assert usage_of(b'{"choices": []}') is None
    assert usage_of(b"not json") is None


def sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


STREAM = (
    sse({"choices": [{"delta": {"role": "assistant", "content": ""}}], "usage": None})
    + sse({"choices": [{"delta": {"content": "Hello"}}], "usage": None})
    + sse({"choices": [{"delta": {"content": " world"}}], "usage": None})
    + sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("cut", [1, 7, 30, 64, 200])
def test_scanner_keeps_every_byte_whatever_the_chunking(cut: int) -> None:
    scanner = StreamUsage(strip_usage_chunk=False)
    out = b"".join(scanner.feed(STREAM[i : i + cut]) for i in range(0, len(STREAM), cut))
    assert out + scanner.flush() == STREAM
    assert scanner.usage == Usage(4, 2)


def test_scanner_strips_the_usage_chunk_when_the_client_did_not_ask() -> None:
    scanner = StreamUsage(strip_usage_chunk=True)
    out = scanner.feed(STREAM) + scanner.flush()
    assert b'"usage":{' not in out and out.endswith(b"data: [DONE]\n\n")
    assert scanner.usage == Usage(4, 2)
    assert out.count(b"\n\n") == STREAM.count(b"\n\n") - 1


def test_scanner_counts_produced_text_when_no_usage_comes() -> None:
    scanner = StreamUsage(strip_usage_chunk=True)
    cut = STREAM[: STREAM.index(b'data: {"choices":[],')]
    scanner.feed(cut)
    assert scanner.usage is None
    assert scanner.produced_tokens == 3  # "Hello world": 11 characters, 4 a token


USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
@pytest.mark.parametrize("cut", [1, 2, 7, 64, 1000])
def test_scanner_reads_every_line_ending_the_sse_spec_allows(newline: bytes, cut: int) -> None:
    # sse-starlette (llama-cpp-python's server) ends lines with CRLF: each event must pass
    # as it completes, whatever the chunking (a CRLF may be cut between two reads), and
    # the usage chunk be read and taken out.
    stream = STREAM.replace(b"\n", newline)
    scanner = StreamUsage(strip_usage_chunk=True)
    parts = [scanner.feed(stream[i : i + cut]) for i in range(0, len(stream), cut)]
    first_event = stream.index(newline * 2) + 2 * len(newline)
    assert b"".join(parts)[:first_event] == stream[:first_event]  # passed on, not held
    out = b"".join(parts) + scanner.flush()
    assert scanner.usage == Usage(4, 2) and scanner.produced_tokens == 3
    assert b'"usage":{' not in out and out.endswith(b"data: [DONE]" + newline * 2)
    assert out.count(newline * 2) == stream.count(newline * 2) - 1


def test_usage_riding_on_a_content_chunk_settles_and_is_taken_out_of_it() -> None:
    # Gemini's OpenAI-compatible API and vLLM's continuous usage report usage on chunks
    # that carry choices: it settles the request, and a client that did not ask for it
    # gets the chunk's content without it.
    last = {"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}], "usage": USAGE}
    for newline in (b"\n", b"\r\n"):
        stream = (sse(last) + b"data: [DONE]\n\n").replace(b"\n", newline)
        kept = StreamUsage(strip_usage_chunk=False)
        assert kept.feed(stream) == stream and kept.usage == Usage(4, 2)
        stripped = StreamUsage(strip_usage_chunk=True)
        out = stripped.feed(stream) + stripped.flush()
        assert stripped.usage == Usage(4, 2)
        first, _, rest = out.partition(newline * 2)
        assert orjson.loads(first.removeprefix(b"data: ")) == {
            "choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]
        }
        assert rest == b"data: [DONE]" + newline * 2


def test_scanner_counts_tool_calls_refusals_and_reasoning_as_produced() -> None:
    # A cut stream (or an upstream that reports nothing) is charged what it produced:
    # tool-call names and arguments are output as much as text is.
    arguments = '{"location": "Paris, France"}'  # 29 characters
    call = {"index": 0, "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}}  # fmt: skip
    scanner = StreamUsage(strip_usage_chunk=True)
    scanner.feed(
        sse({"choices": [{"delta": {"role": "assistant", "tool_calls": [call]}}]})
        + sse({"choices": [{"delta": {"function_call": {"arguments": "abcd"}}}]})
        + sse({"choices": [{"delta": {"refusal": "no", "reasoning_content": "hmm"}}]})
        + sse({"choices": [{"index": 0, "text": "done"}]})  # completions
    )
    assert scanner.usage is None
    assert scanner.text_chars == len("get_weather") + 29 + 4 + 2 + 3 + 4


def test_the_last_event_is_read_even_without_its_blank_line() -> None:
    scanner = StreamUsage(strip_usage_chunk=True)
    out = scanner.feed(sse({"choices": [{"delta": {"content": "Hello"}}]}))
    out += scanner.feed(b"data: " + orjson.dumps({"choices": [], "usage": USAGE}))
    assert scanner.flush() == b""  # the usage chunk the client did not ask for
    assert scanner.usage == Usage(4, 2) and b"usage" not in out


def test_an_event_with_an_id_line_is_still_read() -> None:
    scanner = StreamUsage(strip_usage_chunk=True)
    usage_event = b"id: 7\nevent: message\ndata: " + orjson.dumps({"choices": [], "usage": USAGE})
    assert scanner.feed(usage_event + b"\n\n") == b""
    assert scanner.usage == Usage(4, 2)
