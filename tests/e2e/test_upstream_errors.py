"""Upstream failures become gateway errors: 504 past the deadline, 502 otherwise, and
an in-band error event once a stream has started."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from e2e_clients import CHAT_MODEL, KeyIssuer, assert_error_body, assert_sdk_error, messages, sdk

from harness import Gateway, free_port, policy

DEAD_MODEL = "gpt-4"  # routed to a port nobody listens on


@pytest.fixture(scope="module")
def faulty_client(
    tmp_path_factory: pytest.TempPathFactory, upstream: str
) -> Iterator[openai.OpenAI]:
    """A pro key on a gateway whose chat model must answer its first byte within 500ms."""
    doc = policy(upstream)
    doc["models"][CHAT_MODEL]["deployments"] = [
        {"url": upstream, "timeouts": {"first_byte": "500ms", "total": "2s"}}
    ]
    doc["models"][DEAD_MODEL]["deployments"] = [{"url": f"http://127.0.0.1:{free_port()}/v1"}]
    gateway = Gateway(tmp_path_factory.mktemp("faulty"), doc)
    try:
        gateway.start()
        with sdk(gateway, KeyIssuer(gateway).issue("pro").key) as pro_client:
            yield pro_client
    finally:
        gateway.stop()


def test_hanging_upstream_is_a_504_at_the_first_byte_deadline(faulty_client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        faulty_client.chat.completions.create(model=CHAT_MODEL, messages=messages("[[mock:hang]]"))
    elapsed = time.monotonic() - started
    assert_sdk_error(err.value, 504, "upstream_timeout")
    # The first-byte deadline (500ms) ended it, not the total one (2s) nor the client's.
    assert 0.45 <= elapsed < 1.9, elapsed


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_server_error_is_a_502(faulty_client: openai.OpenAI, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        faulty_client.chat.completions.create(
            model=CHAT_MODEL, messages=messages(f"[[mock:error={status}]]")
        )
    assert_sdk_error(err.value, 502, "upstream_error")


def test_unreachable_upstream_is_a_502(faulty_client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        faulty_client.chat.completions.create(model=DEAD_MODEL, messages=messages("anyone there?"))
    assert_sdk_error(err.value, 502, "upstream_unavailable")


def test_body_cut_short_by_the_upstream_is_a_502(faulty_client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        faulty_client.chat.completions.create(model=CHAT_MODEL, messages=messages("[[mock:drop]]"))
    assert_sdk_error(err.value, 502, "upstream_error")


def test_stream_cut_short_ends_with_an_error_event(faulty_client: openai.OpenAI) -> None:
    stream = faulty_client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("[[mock:drop]] [[mock:tokens=20]]"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received), "the stream failed before relaying anything"
    assert_error_body({"error": err.value.body}, "upstream_error")


def test_gateway_serves_normally_after_upstream_failures(faulty_client: openai.OpenAI) -> None:
    completion = faulty_client.chat.completions.create(model=CHAT_MODEL, messages=messages("hello"))
    assert completion.choices[0].message.content
