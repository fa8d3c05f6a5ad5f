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
