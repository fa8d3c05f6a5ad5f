"""Requests the gateway refuses for their shape: size (413), body (400), path and method.

Raw HTTP here: the SDK cannot send invalid JSON, omit ``model``, or choose the framing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from e2e_clients import (
    CHAT_MODEL,
    TIMEOUT,
    IssuedKey,
    MockUpstream,
    assert_error_response,
    messages,
)

from harness import Gateway

MAX_BODY = 65536  # server.max_body_bytes in the harness policy


def chat_body_of_size(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes."""
    empty = json.dumps({"model": CHAT_MODEL, "messages": messages("")}).encode()
    body = json.dumps({"model": CHAT_MODEL, "messages": messages("x" * (size - len(empty)))})
    assert len(body) == size
    return body.encode()


def in_chunks(body: bytes, size: int = 8192) -> Iterator[bytes]:
    """A generator body: httpx sends it with chunked transfer and no content-length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post_chat(gateway: Gateway, key: IssuedKey, content: bytes | Iterator[bytes]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        content=content,
        headers={"authorization": f"Bearer {key.key}", "content-type": "application/json"},
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("size", "status"), [(MAX_BODY, 200), (MAX_BODY + 1, 413)])
def test_body_size_cap(
    gateway: Gateway,
    pro_key: IssuedKey,
    mock: MockUpstream,
    chunked: bool,
    size: int,
    status: int,
) -> None:
    body = chat_body_of_size(size)
    seen = mock.requests_seen()
    response = post_chat(gateway, pro_key, in_chunks(body) if chunked else body)
    assert ("content-length" in response.request.headers) is not chunked
    if status == 200:
        assert response.status_code == 200, response.text
        assert mock.last_request()["body"] == json.loads(body)
    else:
        assert_error_response(response, 413, "payload_too_large")
        assert mock.requests_seen() == seen


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-3.5-turbo", "messages": [', None),
        (b"", None),
        (as_json([{"model": CHAT_MODEL}]), None),
        (as_json({"messages": messages("hello")}), "model"),
        (as_json({"model": 35, "messages": messages("hello")}), "model"),
        (
            as_json({"model": CHAT_MODEL, "messages": messages("hi"), "max_tokens": -1}),
            "max_tokens",
        ),
    ],
    ids=["invalid-json", "empty", "not-an-object", "no-model", "model-not-a-string", "bad-max"],
)
def test_malformed_request_is_a_400(
    gateway: Gateway, pro_key: IssuedKey, mock: MockUpstream, body: bytes, param: str | None
) -> None:
    seen = mock.requests_seen()
    error = assert_error_response(post_chat(gateway, pro_key, body), 400, "invalid_request")
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert mock.requests_seen() == seen


def test_unknown_path_is_a_404(gateway: Gateway, pro_key: IssuedKey) -> None:
    response = httpx.get(
        f"{gateway.base_url}/v1/no-such-endpoint",
        headers={"authorization": f"Bearer {pro_key.key}"},
        timeout=TIMEOUT,
    )
    assert_error_response(response, 404, "not_found")


def test_wrong_method_is_a_405(gateway: Gateway, pro_key: IssuedKey) -> None:
    response = httpx.get(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {pro_key.key}"},
        timeout=TIMEOUT,
    )
    assert_error_response(response, 405, "method_not_allowed")
