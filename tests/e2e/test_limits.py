"""Rate limits: the free plan's 10 requests a minute per key, exact under concurrency.

Every test spends a fresh key: the limit is per key, and one refills only every 6s,
far longer than a test takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import openai
import pytest
from e2e_clients import (
    CHAT_MODEL,
    KeyIssuer,
    MockUpstream,
    assert_sdk_error,
    async_sdk,
    messages,
    sdk,
)

from harness import Gateway

LIMIT = 10  # plans.free.limits: 10 requests per minute per key
ATTEMPTS = 15
POLICY_ITEM = '"free.key-requests-1m";q=10;w=60'


def assert_limit_headers(headers: Mapping[str, str], remaining: int) -> None:
    assert headers["x-ratelimit-limit-requests"] == str(LIMIT)
    assert headers["x-ratelimit-remaining-requests"] == str(remaining)
    assert headers["x-ratelimit-reset-requests"]
    assert headers["ratelimit-policy"] == POLICY_ITEM
    assert headers["ratelimit"].startswith(f'"free.key-requests-1m";r={remaining};t=')


def assert_rate_limited(exc: openai.RateLimitError) -> None:
    assert_sdk_error(exc, 429, "rate_limit_exceeded")
    assert_limit_headers(exc.response.headers, remaining=0)
    retry_after = exc.response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    # One request's worth refills every 60s / 10 = 6s.
    assert 1 <= int(retry_after) <= 6
    assert int(exc.response.headers["retry-after-ms"]) <= int(retry_after) * 1000


def test_ten_of_fifteen_rapid_requests_pass(
    gateway: Gateway, keys: KeyIssuer, mock: MockUpstream
) -> None:
    seen = mock.requests_seen()
    remaining: list[int] = []
    refused: list[openai.RateLimitError] = []
    with sdk(gateway, keys.issue("free").key) as client:
        for _ in range(ATTEMPTS):
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=CHAT_MODEL, messages=messages("count me"), max_tokens=5
                )
            except openai.RateLimitError as exc:
                refused.append(exc)
                continue
            assert not refused, "a request passed after the limit had refused one"
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert_limit_headers(raw.headers, remaining[-1])
            assert raw.parse().choices[0].message.content
    assert remaining == list(range(LIMIT - 1, -1, -1))
    assert len(refused) == ATTEMPTS - LIMIT
    for refusal in refused:
        assert_rate_limited(refusal)
    assert mock.requests_seen() - seen == LIMIT  # refused requests never reach upstream


def test_limit_is_per_key(gateway: Gateway, keys: KeyIssuer) -> None:
    spent, fresh = keys.issue("free"), keys.issue("free")
    with sdk(gateway, spent.key) as client:
        for _ in range(LIMIT):
            client.chat.completions.create(model=CHAT_MODEL, messages=messages("spend"))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=CHAT_MODEL, messages=messages("one more"))
    with sdk(gateway, fresh.key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=messages("same tenant, other key")
        )
    assert_limit_headers(raw.headers, remaining=LIMIT - 1)


async def test_fifteen_concurrent_requests_admit_exactly_ten(
    gateway: Gateway, keys: KeyIssuer
) -> None:
    async with async_sdk(gateway, keys.issue("free").key) as client:
        outcomes = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model=CHAT_MODEL, messages=messages(f"concurrent {i}"), max_tokens=5
                )
                for i in range(ATTEMPTS)
            ),
            return_exceptions=True,
        )
    passed = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and o not in refused]
    assert not unexpected
    assert len(passed) == LIMIT
    # Admission is atomic: each admitted request saw a different remaining count.
    seen = sorted(int(raw.headers["x-ratelimit-remaining-requests"]) for raw in passed)
    assert seen == list(range(LIMIT))
    for exc in refused:
        assert_rate_limited(exc)
