"""One gateway process shared by the e2e modules that need no special upstream.

Starting a gateway and creating keys through the CLI each cost about a second, so the
plain-policy tests share this one; a test that spends a rate limit takes a fresh key.
Modules that need a misbehaving or slow upstream start their own gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from e2e_clients import (
    UPSTREAM_CREDENTIAL,
    UPSTREAM_CREDENTIAL_ENV,
    IssuedKey,
    KeyIssuer,
    MockUpstream,
    sdk,
)
from webhooks import Receiver

from harness import Gateway, Process, policy


def shared_policy(upstream: str) -> dict[str, Any]:
    doc = policy(upstream)
    doc["models"]["text-embedding-3-small"]["deployments"][0]["api_key_env"] = (
        UPSTREAM_CREDENTIAL_ENV
    )
    # Like free, but a max_tokens above the cap is refused instead of clamped.
    doc["plans"]["strict"] = {
        "models": ["gpt-3.5-turbo"],
        "max_tokens": 512,
        "max_tokens_policy": "reject",
        "limits": [{"scope": "key", "requests": 600, "per": "1m"}],
    }
    doc["routes"] = {"/v1/gpt4": {"model": "gpt-4"}}  # forces its model on any body
    return doc


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    env = {UPSTREAM_CREDENTIAL_ENV: UPSTREAM_CREDENTIAL}
    gw = Gateway(tmp_path_factory.mktemp("gateway"), shared_policy(upstream), env).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def keys(gateway: Gateway) -> KeyIssuer:
    return KeyIssuer(gateway)


@pytest.fixture(scope="session")
def mock(mock_llm: Process) -> MockUpstream:
    return MockUpstream(mock_llm.base_url)


@pytest.fixture(scope="session")
def pro_key(keys: KeyIssuer) -> IssuedKey:
    """600 requests a minute: enough for every test that shares it."""
    return keys.shared("pro")


@pytest.fixture
def client(gateway: Gateway, pro_key: IssuedKey) -> Iterator[openai.OpenAI]:
    with sdk(gateway, pro_key.key) as pro_client:
        yield pro_client


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver for alert deliveries (one per module)."""
    started = Receiver()
    started.thread.start()
    yield started
    started.server.shutdown()
    started.server.server_close()
