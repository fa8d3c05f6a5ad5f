"""The response cache: exact match, deterministic requests only, never across tenants,
not charged on a hit, and the degrade path for a plan when the upstream is gone."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e_clients import ledger_row, messages, sdk

from harness import Gateway, Process, policy, start_mock
from metrics_text import delta, scrape

MODEL = "gpt-3.5-turbo"
_serial = itertools.count()


@dataclass
class Setup:
    mock: Process
    gateway: Gateway


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("cache")
    mock = start_mock(tmp)
    doc = policy(mock.base_url + "/v1")
    doc["plans"]["cached"] = {"models": ["*"], "cache": "always"}
    doc["plans"]["degraded"] = {"models": ["*"], "cache": "degrade"}
    doc["routing"]["cache"] = {"ttl": "10m"}
    gateway = Gateway(tmp / "gw", doc)
    try:
        gateway.start()
        yield Setup(mock, gateway)
    finally:
        gateway.stop()
        mock.stop()


def account(gw: Gateway, plan: str) -> str:
    name = f"{plan}-{next(_serial)}"
    gw.cli("tenants", "create", name, "--plan", plan, "--json")
    return str(json.loads(gw.cli("keys", "create", "--tenant", name, "--json"))["key"])


def seen(mock: Process) -> int:
    return int(httpx.get(f"{mock.base_url}/_mock/stats", timeout=5).json()["requests"])


def ask(client: openai.OpenAI, text: str, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages(text), **extra
    )


def test_a_deterministic_request_is_answered_from_the_cache_and_not_charged(setup: Setup) -> None:
    text = f"what is {next(_serial)} squared?"
    counted = scrape(setup.gateway.admin_url)
    with sdk(setup.gateway, account(setup.gateway, "cached")) as client:
        before = seen(setup.mock)
        first = ask(client, text, temperature=0)
        second = ask(client, text, temperature=0)
    after = scrape(setup.gateway.admin_url)
    for result in ("miss", "stored", "hit"):  # the cache's counter says the same
        assert delta(counted, after, "quotagate_response_cache_total", result=result) == 1
    assert first.headers["x-quotagate-cache"] == "miss"
    assert second.headers["x-quotagate-cache"] == "hit"
    assert seen(setup.mock) == before + 1
    assert second.http_response.content == first.http_response.content
    assert ledger_row(setup.gateway, first.headers["x-request-id"])["cost_micros"] > 0
    assert ledger_row(setup.gateway, second.headers["x-request-id"])["cost_micros"] == 0


def test_another_tenant_never_gets_the_cached_answer(setup: Setup) -> None:
    text = f"my secret number is {next(_serial)}"
    gw = setup.gateway
    with sdk(gw, account(gw, "cached")) as alice, sdk(gw, account(gw, "cached")) as bob:
        assert ask(alice, text, temperature=0).headers["x-quotagate-cache"] == "miss"
        assert ask(alice, text, temperature=0).headers["x-quotagate-cache"] == "hit"
        before = seen(setup.mock)
        assert ask(bob, text, temperature=0).headers["x-quotagate-cache"] == "miss"
    assert seen(setup.mock) == before + 1


@pytest.mark.parametrize(
    "extra",
    [{}, {"temperature": 0.7}, {"temperature": 0, "n": 2}],
    ids=["default-temperature", "temperature-0.7", "two-choices"],
)
def test_a_non_deterministic_request_is_never_cached(setup: Setup, extra: dict[str, Any]) -> None:
    text = f"tell me a story {next(_serial)}"
    with sdk(setup.gateway, account(setup.gateway, "cached")) as client:
        before = seen(setup.mock)
        answers = [ask(client, text, **extra) for _ in range(2)]
    assert seen(setup.mock) == before + 2
    assert all("x-quotagate-cache" not in a.headers for a in answers)


def test_a_different_request_is_a_miss(setup: Setup) -> None:
    text = f"question {next(_serial)}"
    with sdk(setup.gateway, account(setup.gateway, "cached")) as client:
        ask(client, text, temperature=0)
        other = ask(client, text, temperature=0, max_tokens=5)
    assert other.headers["x-quotagate-cache"] == "miss"


def test_a_cached_stream_replays_the_same_events(setup: Setup) -> None:
    text = f"[[mock:tokens=12]] stream {next(_serial)}"
    with sdk(setup.gateway, account(setup.gateway, "cached")) as client:
        before = seen(setup.mock)
        texts = []
        for _ in range(2):
            stream = client.chat.completions.create(
                model=MODEL, messages=messages(text), temperature=0, stream=True
            )
            texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert seen(setup.mock) == before + 1
    assert texts[0] and texts[0] == texts[1]


def test_the_degrade_plan_gets_a_kept_answer_when_the_upstream_is_gone(
    tmp_path: Path,
) -> None:
    mock = start_mock(tmp_path)
    doc = policy(mock.base_url + "/v1")
    doc["plans"]["degraded"] = {"models": ["*"], "cache": "degrade"}
    gateway = Gateway(tmp_path / "gw", doc)
    try:
        gateway.start()
        with sdk(gateway, account(gateway, "degraded")) as client:
            ask(client, "a popular question", temperature=0)
            again = ask(client, "a popular question", temperature=0)
            assert "x-quotagate-cache" not in again.headers  # degrade: not served while up
            mock.stop()
            served = ask(client, "a popular question", temperature=0)
            assert served.headers["x-quotagate-cache"] == "hit"
            assert served.headers["x-quotagate-degraded"] == "cache"
            assert served.http_response.content == again.http_response.content
            with pytest.raises(openai.APIStatusError) as err:
                ask(client, "a question nobody asked before", temperature=0)
            assert err.value.status_code in (502, 503)
    finally:
        gateway.stop()
        mock.stop()
