"""Proxying: answers pass through unchanged, only the gateway's own headers go upstream,
and every response carries a request id that the upstream sees too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from e2e_clients import (
    CHAT_MODEL,
    TIMEOUT,
    UPSTREAM_CREDENTIAL,
    IssuedKey,
    MockUpstream,
    messages,
    sdk,
)

from harness import Gateway

EMBEDDING_MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def direct(upstream: str) -> Iterator[openai.OpenAI]:
    """The SDK talking to the mock upstream itself, for comparison."""
    with openai.OpenAI(
        base_url=upstream, api_key="direct", max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


def answer(value: Any) -> dict[str, Any]:
    """An API object without the fields that differ between two calls (the clock)."""
    dumped = value.model_dump()
    dumped.pop("created", None)
    return dict(dumped)


def test_text_completion_passes_through(
    client: openai.OpenAI, direct: openai.OpenAI, mock: MockUpstream
) -> None:
    via_gateway = client.completions.create(model=CHAT_MODEL, prompt="Say this is a test")
    forwarded = mock.last_request()
    assert forwarded["path"] == "/v1/completions"
    assert forwarded["body"]["prompt"] == "Say this is a test"
    assert via_gateway.choices[0].text
    assert answer(via_gateway) == answer(
        direct.completions.create(model=CHAT_MODEL, prompt="Say this is a test")
    )


def test_chat_completion_passes_through(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    asked: dict[str, Any] = {"model": CHAT_MODEL, "messages": messages("hello"), "n": 2}
    via_gateway = client.chat.completions.create(**asked)
    assert len(via_gateway.choices) == 2
    assert answer(via_gateway) == answer(direct.chat.completions.create(**asked))


def test_embeddings_pass_through_with_the_gateways_upstream_credential(
    client: openai.OpenAI, direct: openai.OpenAI, mock: MockUpstream, pro_key: IssuedKey
) -> None:
    texts = ["first text", "second text"]
    via_gateway = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    forwarded = mock.last_request()
    assert forwarded["path"] == "/v1/embeddings"
    assert forwarded["body"]["input"] == texts
    # The deployment's api_key_env replaces the client's key; the client's never leaves.
    assert forwarded["headers"]["authorization"] == f"Bearer {UPSTREAM_CREDENTIAL}"
    assert [e.embedding for e in via_gateway.data] == [
        e.embedding for e in direct.embeddings.create(model=EMBEDDING_MODEL, input=texts).data
    ]
    assert pro_key.key not in str(forwarded)


def test_client_headers_are_not_forwarded(
    client: openai.OpenAI, mock: MockUpstream, pro_key: IssuedKey
) -> None:
    client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("hello"), extra_headers={"x-tenant-secret": "s3cret"}
    )
    forwarded = mock.last_request()["headers"]
    assert "authorization" not in forwarded
    assert "x-tenant-secret" not in forwarded
    assert not [name for name in forwarded if name.startswith("x-stainless")]
    assert pro_key.key not in str(forwarded)


def test_client_request_id_is_echoed_and_forwarded(
    client: openai.OpenAI, mock: MockUpstream
) -> None:
    request_id = "e2e-trace.42:abc_DEF"
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages("hello"), extra_headers={"x-request-id": request_id}
    )
    assert raw.headers["x-request-id"] == request_id
    assert mock.last_request()["headers"]["x-request-id"] == request_id


def test_client_request_id_is_echoed_on_errors_too(gateway: Gateway) -> None:
    with sdk(gateway, "sk-bad") as bad, pytest.raises(openai.AuthenticationError) as err:
        bad.models.list(extra_headers={"x-request-id": "e2e-refused-1"})
    assert err.value.response.headers["x-request-id"] == "e2e-refused-1"


@pytest.mark.parametrize(
    "unsafe",
    ["has spaces in it", "x" * 129, 'quote"d', "semi;colon"],
    ids=["spaces", "too-long", "quote", "semicolon"],
)
def test_unsafe_request_id_is_replaced(
    client: openai.OpenAI, mock: MockUpstream, unsafe: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages("hello"), extra_headers={"x-request-id": unsafe}
    )
    generated = raw.headers["x-request-id"]
    assert generated and generated != unsafe
    assert mock.last_request()["headers"]["x-request-id"] == generated


def test_every_response_has_its_own_request_id(
    client: openai.OpenAI, gateway: Gateway, mock: MockUpstream
) -> None:
    ids: list[str] = []
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages("hello")
    )
    ids.append(raw.headers["x-request-id"])
    assert mock.last_request()["headers"]["x-request-id"] == ids[-1]
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=messages("hello"), stream=True
    ) as streamed:
        ids.append(streamed.headers["x-request-id"])
    ids.append(client.models.with_raw_response.list().headers["x-request-id"])
    with sdk(gateway, "sk-bad") as stranger:
        for refused in (
            lambda: client.chat.completions.create(model="nope", messages=messages("hi")),
            stranger.models.list,
        ):
            with pytest.raises(openai.APIStatusError) as err:
                refused()
            ids.append(err.value.response.headers["x-request-id"])
    assert all(ids) and len(set(ids)) == len(ids), ids
