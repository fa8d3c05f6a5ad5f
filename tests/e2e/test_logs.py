"""The shared gateway's debug log never holds an API key, whatever the request did."""

from __future__ import annotations

import secrets

import openai
import pytest
from e2e_clients import CHAT_MODEL, IssuedKey, KeyIssuer, messages, sdk

from harness import Gateway


def exercise_every_outcome(gateway: Gateway, key: IssuedKey) -> None:
    """One request for each way a request can end, all with ``key`` (a free one)."""
    with sdk(gateway, key.key) as client:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages("hello"))
        list(client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi"), stream=True))
        client.embeddings.create(model="text-embedding-3-small", input="embed")
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model=CHAT_MODEL, messages=messages("[[mock:error=500]]")
            )
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="gpt-4", messages=messages("hello"))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=CHAT_MODEL, messages=messages("x"), max_tokens=0)
        with pytest.raises(openai.RateLimitError):  # free: 10 a minute
            for _ in range(11):
                client.chat.completions.create(model=CHAT_MODEL, messages=messages("spend"))
    # The key in x-api-key instead: authenticated, then refused by the spent limit.
    with sdk(gateway, "unused") as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=messages("hello"),
            extra_headers={"Authorization": openai.omit, "x-api-key": key.key},
        )


def test_gateway_log_never_contains_a_key(gateway: Gateway, keys: KeyIssuer) -> None:
    key = keys.issue("free")
    forged = IssuedKey(key.key_id, f"qg-{key.key_id}_{secrets.token_urlsafe(32)}")
    exercise_every_outcome(gateway, key)
    with sdk(gateway, forged.key) as client, pytest.raises(openai.AuthenticationError):
        client.models.list(extra_headers={"x-request-id": "e2e-log-forged"})
    log = gateway.log_text()
    assert "e2e-log-forged" in log  # debug logging is on and records refusals
    assert "rate limit reached" in log.lower()
    for issued in [*keys.issued, forged]:
        assert issued.key not in log, f"key {issued.key_id} in plaintext in the log"
        assert issued.secret_part not in log, f"secret of key {issued.key_id} in the log"
