"""A gateway with ``accounting.estimator: tiktoken`` reserves OpenAI's exact prompt count
and reports, per request, how its estimate compared with the upstream's count."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tiktoken
from e2e_clients import CHAT_MODEL, ledger_row, sdk
from prometheus_client.parser import text_string_to_metric_families

from harness import Gateway, policy
from tiktoken_files import seed

MAX_TOKENS = 40
TEXT = 'Count me exactly: the gateway reserves what OpenAI\'s tokenizer says, {"json": 1}.'


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed(tmp_path_factory.mktemp("tiktoken"))


@pytest.fixture(scope="module")
def cl100k(cache: Path) -> tiktoken.Encoding:
    """Loaded from the seeded cache once; tiktoken keeps it for the test process."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("cl100k_base")


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: str, cache: Path
) -> Iterator[Gateway]:
    doc = policy(upstream, accounting={"estimator": "tiktoken"})
    doc["plans"]["metered"] = {
        "models": [CHAT_MODEL],
        "quotas": [{"scope": "tenant", "tokens": 100_000, "per": "day"}],
    }
    env = {"TIKTOKEN_CACHE_DIR": str(cache)}
    gw = Gateway(tmp_path_factory.mktemp("estimator"), doc, env).start()
    yield gw
    gw.stop()


def estimate_ratio(gw: Gateway) -> tuple[float, float]:
    """(count, sum) of quotagate_prompt_estimate_ratio."""
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "quotagate_prompt_estimate_ratio":
            samples = {s.name: s.value for s in family.samples}
            return samples["quotagate_prompt_estimate_ratio_count"], samples[
                "quotagate_prompt_estimate_ratio_sum"
            ]
    raise AssertionError("quotagate_prompt_estimate_ratio not exported")


def test_the_reservation_holds_tiktokens_count_plus_max_tokens(
    gateway: Gateway, cl100k: tiktoken.Encoding
) -> None:
    key = json.loads(gateway.cli("keys", "create", "--tenant", _tenant(gateway), "--json"))
    before = estimate_ratio(gateway)
    raw = sdk(gateway, key["key"]).chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": TEXT}], max_tokens=MAX_TOKENS
    )
    answer = raw.parse()
    assert answer.usage is not None
    row = ledger_row(gateway, raw.headers["x-request-id"])
    exact = 3 + 3 + len(cl100k.encode(TEXT))
    assert row["reserved_tokens"] == exact + MAX_TOKENS
    # Settled to the upstream's own count (the mock's tokenizer is not OpenAI's).
    assert row["prompt_tokens"] == answer.usage.prompt_tokens
    count, total = estimate_ratio(gateway)
    assert count == before[0] + 1
    assert total - before[1] == pytest.approx(exact / answer.usage.prompt_tokens)


def _tenant(gw: Gateway) -> str:
    gw.cli("tenants", "create", "metered-1", "--plan", "metered")
    return "metered-1"
