"""Hot reload on SIGHUP: a good policy is applied, a bad one refused, the gateway serves on."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from harness import Gateway, policy


@pytest.fixture
def gateway(tmp_path: Path, upstream: str) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, policy(upstream)).start()
    yield gw
    gw.stop()


def chat(gw: Gateway, key: str) -> httpx.Response:
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def hup_until(gw: Gateway, key: str, expected_policy: str) -> httpx.Response:
    assert gw.process is not None
    gw.process.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = chat(gw, key)
        if expected_policy in response.headers.get("ratelimit-policy", ""):
            return response
        time.sleep(0.02)  # poll interval, not a wait for the result
    raise AssertionError(f"policy {expected_policy!r} not applied: {response.headers}")


def test_sighup_applies_a_good_policy_and_refuses_a_bad_one(gateway: Gateway) -> None:
    key = gateway.tenant_key("acme", "free")
    assert "q=10;w=60" in chat(gateway, key).headers["ratelimit-policy"]

    doc = yaml.safe_load(gateway.config.read_text())
    doc["plans"]["free"]["limits"][0]["requests"] = 20
    gateway.config.write_text(yaml.safe_dump(doc))
    assert chat(gateway, key).status_code == 200
    hup_until(gateway, key, "q=20;w=60")

    doc["plans"]["free"]["limits"][0]["per"] = "1x"
    gateway.config.write_text(yaml.safe_dump(doc))
    assert gateway.process is not None
    gateway.process.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "policy reload refused" not in gateway.log_text():
        assert time.monotonic() < deadline, gateway.log_text()
        time.sleep(0.02)  # poll interval
    assert "plans.free.limits[0].per: invalid duration '1x'" in gateway.log_text()
    response = chat(gateway, key)
    assert response.status_code == 200
    assert "q=20;w=60" in response.headers["ratelimit-policy"]
