"""The seed scenario on the embedded default (the bundled policy, no --config): a free
client and a pro client get client-credentials tokens from the built-in issuer and call
the route aliases ``/v1/gpt35`` and ``/v1/gpt4`` with the official ``openai`` SDK, the
JWT as its api_key. The free tenant's 1,000 tokens a day run out; gpt-4 is pro's only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from e2e_clients import TIMEOUT, assert_sdk_error, messages
from openai.types.chat import ChatCompletion

from harness import QUOTAGATE, Process, free_port, start


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("embedded")
    port, mock_port = free_port(), free_port()
    env = {
        **os.environ,
        "QUOTAGATE_DATA_DIR": str(tmp / "data"),
        "QUOTAGATE_LISTEN": f"127.0.0.1:{port}",
        "QUOTAGATE_MOCK_PORT": str(mock_port),
        "QUOTAGATE_MOCK_EU_PORT": str(free_port()),
        "QUOTAGATE_MOCK_US_PORT": str(free_port()),
        "QUOTAGATE_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
    }
    env.pop("QUOTAGATE_CONFIG", None)
    env.pop("QUOTAGATE_SECRET", None)
    process = start(["serve"], tmp / "gateway.log", "/healthz", port, env)
    yield process, env
    process.stop()


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [*QUOTAGATE, *args], env=env, capture_output=True, text=True, timeout=60, cwd=Path.cwd()
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def client_token(process: Process, env: dict[str, str], tenant: str, plan: str) -> str:
    cli(env, "tenants", "create", tenant, "--plan", plan)
    created = json.loads(cli(env, "clients", "create", "--tenant", tenant, "--json"))
    response = httpx.post(
        f"{process.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(created["client_id"], created["client_secret"]),
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def alias_client(process: Process, alias: str, token: str) -> openai.OpenAI:
    """The SDK pointed at a route alias: its chat.completions go to ``<alias>/chat/completions``."""
    return openai.OpenAI(
        base_url=f"{process.base_url}/v1/{alias}", api_key=token, max_retries=0, timeout=TIMEOUT
    )


def test_free_client_uses_gpt35_until_its_daily_tokens_run_out(
    embedded: tuple[Process, dict[str, str]],
) -> None:
    process, env = embedded
    token = client_token(process, env, "free-co", "free")
    spent = 0
    with alias_client(process, "gpt35", token) as client:
        for _ in range(10):
            try:
                reply = client.chat.completions.create(
                    model="gpt-3.5-turbo", messages=messages("[[mock:tokens=200]] tell me more")
                )
            except openai.APIStatusError as exc:
                assert_sdk_error(exc, 402, "free.tenant-tokens-day-gpt-3.5-turbo")
                break
            assert reply.model == "gpt-3.5-turbo"
            assert reply.usage is not None
            spent += reply.usage.total_tokens
        else:
            pytest.fail("1,000 tokens a day never ran out")
    assert 400 <= spent <= 1000
    with (
        alias_client(process, "gpt4", token) as client,
        pytest.raises(openai.APIStatusError) as err,
    ):
        client.chat.completions.create(model="gpt-4", messages=messages("hi"))
    assert_sdk_error(err.value, 403, "model_not_allowed")


def test_pro_client_calls_gpt4_through_its_alias(embedded: tuple[Process, dict[str, str]]) -> None:
    process, env = embedded
    token = client_token(process, env, "pro-co", "pro")
    with alias_client(process, "gpt4", token) as client:
        # The alias forces its model, whatever the request names.
        reply = client.chat.completions.create(model="gpt-3.5-turbo", messages=messages("hi"))
        assert reply.model == "gpt-4"
        # The bare alias path works too, through the SDK's generic post.
        raw = client.post(
            f"{process.base_url}/v1/gpt4",
            cast_to=ChatCompletion,
            body={"model": "gpt-4", "messages": messages("again")},
        )
        assert raw.model == "gpt-4" and raw.choices[0].message.content
