"""API keys: where a key may be sent, and every way a key is refused with a 401."""

from __future__ import annotations

import secrets

import openai
import pytest
from e2e_clients import (
    CHAT_MODEL,
    IssuedKey,
    KeyIssuer,
    MockUpstream,
    assert_sdk_error,
    messages,
    poll_until_raises,
    sdk,
)

from harness import Gateway

# Well-formed (``qg-<12 hex>_<secret>``) but never issued by this gateway.
UNKNOWN_KEY = f"qg-{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


@pytest.mark.parametrize(
    "key",
    [None, "sk-this-is-not-a-quotagate-key", "qg-short", UNKNOWN_KEY],
    ids=["no-key", "malformed", "truncated", "unknown"],
)
def test_request_without_a_valid_key_is_refused_before_upstream(
    gateway: Gateway, mock: MockUpstream, key: str | None
) -> None:
    seen = mock.requests_seen()
    no_auth = {"Authorization": openai.omit} if key is None else {}
    with sdk(gateway, key or "unused") as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=messages("hello"), extra_headers=no_auth
        )
    assert_sdk_error(err.value, 401, "invalid_api_key")
    assert mock.requests_seen() == seen


def test_models_list_needs_a_key(gateway: Gateway) -> None:
    with sdk(gateway, "unused") as client, pytest.raises(openai.AuthenticationError) as err:
        client.models.list(extra_headers={"Authorization": openai.omit})
    assert_sdk_error(err.value, 401, "invalid_api_key")


def test_real_key_id_with_a_wrong_secret_is_refused(gateway: Gateway, pro_key: IssuedKey) -> None:
    forged = f"qg-{pro_key.key_id}_{secrets.token_urlsafe(32)}"
    with sdk(gateway, forged) as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages("hello"))
    assert_sdk_error(err.value, 401, "invalid_api_key")
    with sdk(gateway, pro_key.key) as client:  # the genuine key is not locked out
        assert client.chat.completions.create(model=CHAT_MODEL, messages=messages("hello"))


def test_key_in_x_api_key_header_is_accepted_and_not_forwarded(
    gateway: Gateway, mock: MockUpstream, pro_key: IssuedKey
) -> None:
    with sdk(gateway, "unused") as client:
        completion = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=messages("hello via x-api-key"),
            extra_headers={"Authorization": openai.omit, "x-api-key": pro_key.key},
        )
    assert completion.choices[0].message.content
    forwarded = mock.last_request()["headers"]
    assert "x-api-key" not in forwarded
    assert "authorization" not in forwarded


def test_revoked_key_is_refused_within_the_cache_ttl(gateway: Gateway, keys: KeyIssuer) -> None:
    key = keys.issue("pro")
    with sdk(gateway, key.key) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages("hello"))
        keys.revoke(key)
        # The policy caches verified keys for 200ms: refusal must follow well within 3s.
        refused = poll_until_raises(
            lambda: client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi")),
            openai.AuthenticationError,
            within=3.0,
        )
        assert isinstance(refused, openai.AuthenticationError)
        assert_sdk_error(refused, 401, "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
