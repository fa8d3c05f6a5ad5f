"""Per-IP limits key on the peer's address unless the peer is a trusted proxy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Gateway, policy

PER_IP = 3
BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


def per_ip_policy(upstream: str, trusted: list[str]) -> dict[str, Any]:
    doc = policy(upstream)
    doc["server"] = {"trusted_proxies": trusted}
    doc["plans"]["per-ip"] = {
        "models": ["gpt-3.5-turbo"],
        "limits": [{"scope": "ip", "requests": PER_IP, "per": "1h"}],
    }
    return doc


@pytest.fixture(scope="module", params=[[], ["127.0.0.1/32"]], ids=["untrusted", "trusted"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: str
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("xff"), per_ip_policy(upstream, request.param))
    gw.start()
    yield gw
    gw.stop()


def statuses(gw: Gateway, key: str, forwarded: list[str]) -> list[int]:
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gw.base_url, headers=headers, timeout=10) as client:
        return [
            client.post(
                "/v1/chat/completions", json=BODY, headers={"x-forwarded-for": f}
            ).status_code
            for f in forwarded
        ]


def test_a_client_cannot_pick_its_own_ip_counter(gateway: Gateway) -> None:
    key = gateway.tenant_key("xff-spoofer", "per-ip")
    forged = [f"198.51.100.{i}" for i in range(PER_IP + 3)]
    got = statuses(gateway, key, forged)
    if gateway.doc["server"]["trusted_proxies"]:
        # 127.0.0.1 is the trusted proxy here: each forwarded address is a client.
        assert got == [200] * len(forged)
        again = statuses(gateway, key, ["203.0.113.1"] * (PER_IP + 1))
        assert again == [200] * PER_IP + [429]
    else:
        # The peer is untrusted: every request counts against 127.0.0.1.
        assert got == [200] * PER_IP + [429] * 3
