"""Token rate limits (TPM): reserve up front, settle with the upstream's usage.

A tokens limit reserves the prompt estimate plus max_tokens before forwarding and,
once the answer is in, replaces that with the upstream's reported usage, for JSON
answers and for streams (whose usage chunk the gateway asks for and, when the client
did not, removes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from e2e_clients import MockUpstream

from harness import Gateway, policy

LIMIT = 2000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    doc = policy(upstream)
    doc["plans"]["tpm"] = {
        "models": ["gpt-3.5-turbo"],
        "limits": [{"scope": "key", "tokens": LIMIT, "per": "1h"}],
    }
    doc["plans"]["tpm-capped"] = {**doc["plans"]["tpm"], "max_tokens": 300}
    gw = Gateway(Path(tmp_path_factory.mktemp("tpm")), doc).start()
    yield gw
    gw.stop()


def client(gw: Gateway, plan: str = "tpm") -> openai.OpenAI:
    key = gw.tenant_key(f"{plan}-tenant", plan)
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)


def ask(c: openai.OpenAI, tokens: int, max_tokens: int = 200, **extra: object) -> object:
    messages = [{"role": "user", "content": f"[[mock:tokens={tokens}]] hello"}]
    return c.chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo",
        messages=messages,
        max_tokens=max_tokens,
        **extra,  # type: ignore[arg-type]
    )


def remaining(raw: object) -> int:
    return int(raw.headers["x-ratelimit-remaining-tokens"])  # type: ignore[attr-defined]


def test_reservation_is_settled_to_the_reported_usage(gateway: Gateway) -> None:
    c = client(gateway)
    first = ask(c, tokens=10)
    usage = first.parse().usage  # type: ignore[attr-defined]
    reserved = LIMIT - remaining(first)
    assert reserved > 200  # prompt estimate + max_tokens 200, taken up front
    second = ask(c, tokens=10)
    # the first request now counts its real usage; the second its own reservation
    assert LIMIT - remaining(second) == usage.total_tokens + reserved
    assert first.headers["x-ratelimit-limit-tokens"] == str(LIMIT)  # type: ignore[attr-defined]
    assert 'qu="quotagate-tokens"' in first.headers["ratelimit-policy"]  # type: ignore[attr-defined]


def test_stream_usage_is_settled_and_hidden_when_not_asked(gateway: Gateway) -> None:
    prompt = "[[mock:tokens=12]] stream"
    messages = [{"role": "user", "content": prompt}]
    # Key A learns what the answer costs (JSON) and what the probe reserves.
    a = client(gateway)
    answer = a.chat.completions.create(model="gpt-3.5-turbo", messages=messages, max_tokens=200)  # type: ignore[arg-type]
    cost = answer.usage.total_tokens  # type: ignore[union-attr]
    probe_reserve = LIMIT - remaining(ask(a, tokens=1, max_tokens=1)) - cost
    # Key B streams the same request without asking for usage.
    b = client(gateway)
    stream = b.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=messages,
        max_tokens=200,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks)  # the usage chunk was taken out
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == answer.choices[0].message.content
    # ...and yet the stream was settled at exactly its reported usage.
    assert LIMIT - remaining(ask(b, tokens=1, max_tokens=1)) == cost + probe_reserve


def test_stream_usage_chunk_reaches_a_client_that_asked(gateway: Gateway) -> None:
    c = client(gateway)
    messages = [{"role": "user", "content": "[[mock:tokens=5]] stream"}]
    chunks = list(
        c.chat.completions.create(
            model="gpt-3.5-turbo", messages=messages, max_tokens=50, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 5


def test_a_request_larger_than_the_limit_is_refused_outright(gateway: Gateway) -> None:
    c = client(gateway)
    with pytest.raises(openai.RateLimitError) as info:
        ask(c, tokens=1, max_tokens=LIMIT + 1)
    assert info.value.code == "request_too_large"
    # Each of n choices may write max_tokens: two of them do not fit where one would.
    half = LIMIT // 2 + 1
    with pytest.raises(openai.RateLimitError) as info:
        ask(c, tokens=1, max_tokens=half, n=2)
    assert info.value.code == "request_too_large"
    assert f"max_tokens {half} x n 2" in info.value.message


def test_tokens_run_out_then_429_with_token_headers(gateway: Gateway) -> None:
    c = client(gateway)
    admitted = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(50):
            ask(c, tokens=100, max_tokens=100)
            admitted += 1
    assert 10 <= admitted < 20  # ~110 tokens each against 2000
    headers = info.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert int(headers["x-ratelimit-remaining-tokens"]) < 200


def test_clamp_and_usage_request_both_reach_the_upstream(
    gateway: Gateway, mock: MockUpstream
) -> None:
    """Two stages rewrite the same request (the plan's cap, the stream's usage option);
    the body is encoded once, with both."""
    c = client(gateway, "tpm-capped")
    messages = [{"role": "user", "content": "[[mock:tokens=3]] both"}]
    list(
        c.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=messages,
            max_tokens=1000,
            stream=True,  # type: ignore[arg-type]
        )
    )
    forwarded = mock.last_request()["body"]
    assert forwarded["max_tokens"] == 300
    assert forwarded["stream_options"] == {"include_usage": True}
