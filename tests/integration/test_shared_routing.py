"""Routing state across instances on one Redis: a circuit one instance opens is open on
the others within a second, and a response kept in the Redis cache by one instance is
served by another. Plus active health checks taking a dead deployment out of rotation
before any request fails on it."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import SHARED_REDIS, Gateway, Process, policy, redis_prefix, start_mock


def readyz(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(url + "/readyz", timeout=5).json()
    return body


def ask(url: str, key: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(
        url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


@pytest.fixture
def two_regions(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    eu, us = start_mock(tmp_path), start_mock(tmp_path)
    yield eu, us
    eu.stop()
    us.stop()


def regional_policy(eu: Process, us: Process, **routing: Any) -> dict[str, Any]:
    doc = policy(us.base_url + "/v1")
    doc["models"]["gpt-4"]["deployments"] = [
        {"url": eu.base_url + "/v1", "region": "eu-west", "name": "eu-1",
         "timeouts": {"first_byte": "300ms"}},
        {"url": us.base_url + "/v1", "region": "us-east", "name": "us-1"},
    ]  # fmt: skip
    doc["plans"]["enterprise"]["limits"] = []
    doc["routing"] = {"region": "eu-west", **routing}
    return doc


def key_for(gw: Gateway, plan: str) -> str:
    tenant = f"t-{secrets.token_hex(4)}"
    gw.cli("tenants", "create", tenant, "--plan", plan)
    return str(json.loads(gw.cli("keys", "create", "--tenant", tenant, "--json"))["key"])


def test_a_circuit_opened_on_one_instance_opens_on_the_others(
    tmp_path: Path, two_regions: tuple[Process, Process]
) -> None:
    eu, us = two_regions
    doc = regional_policy(
        eu, us, breaker={"consecutive_failures": 3, "open_for": "30s", "min_requests": 1000}
    )
    doc["store"] = {"url": SHARED_REDIS, "prefix": redis_prefix()}
    doc["plans"]["cached"] = {"models": ["*"], "cache": "always"}
    doc["routing"]["cache"] = {"store": "redis", "ttl": "1m"}
    gw = Gateway(tmp_path / "gw", doc).start()
    try:
        other = gw.replica()
        key = key_for(gw, "enterprise")
        httpx.post(f"{eu.base_url}/_mock/faults", json={"hang_rate": 1.0}, timeout=5)
        for _ in range(3):  # served by us-1 after eu-1 timed out; 3 timeouts open it
            assert ask(gw.base_url, key, "hello").status_code == 200
        assert readyz(gw.base_url)["deployments"]["gpt-4"]["eu-1"]["circuit"] == "open"
        opened = time.monotonic()
        while readyz(other.base_url)["deployments"]["gpt-4"]["eu-1"]["circuit"] != "open":
            assert time.monotonic() - opened < 1.0, "the other instance never heard of it"
            time.sleep(0.02)  # poll interval, not a wait for the outcome
        hung = httpx.get(f"{eu.base_url}/_mock/stats", timeout=5).json()["requests"]
        for _ in range(5):  # the other instance never tries eu-1: no slow first attempt
            answer = ask(other.base_url, key, "hello")
            assert answer.headers["x-quotagate-deployment"] == "us-1"
        assert httpx.get(f"{eu.base_url}/_mock/stats", timeout=5).json()["requests"] == hung

        # The Redis response cache is shared: kept by one instance, served by the other.
        cached = key_for(gw, "cached")
        first = ask(gw.base_url, cached, "shared answer", temperature=0)
        second = ask(other.base_url, cached, "shared answer", temperature=0)
        assert first.headers["x-quotagate-cache"] == "miss"
        assert second.headers["x-quotagate-cache"] == "hit"
        assert second.content == first.content
    finally:
        gw.stop()


def test_active_health_checks_take_a_dead_deployment_out_before_requests_fail(
    tmp_path: Path, two_regions: tuple[Process, Process]
) -> None:
    eu, us = two_regions
    doc = regional_policy(eu, us, health_check={"interval": "100ms", "timeout": "200ms"})
    gw = Gateway(tmp_path / "gw", doc).start()
    try:
        key = key_for(gw, "enterprise")
        assert ask(gw.base_url, key, "hello").headers["x-quotagate-deployment"] == "eu-1"
        eu.stop()
        deadline = time.monotonic() + 5
        while readyz(gw.base_url)["deployments"]["gpt-4"]["eu-1"]["health_check"] != "failed":
            assert time.monotonic() < deadline, "the health check never noticed"
            time.sleep(0.05)  # poll interval, not a wait for the outcome
        for _ in range(5):
            answer = ask(gw.base_url, key, "hello")
            assert answer.status_code == 200
            assert answer.headers["x-quotagate-deployment"] == "us-1"
        detail = readyz(gw.base_url)["deployments"]["gpt-4"]["eu-1"]
        assert detail["circuit"] == "closed"  # no request failed on it: only the check knew
        metrics = httpx.get(gw.admin_url + "/metrics", timeout=5).text
        assert (
            'quotagate_health_checks_total{deployment="eu-1",model="gpt-4",outcome="failed"}'
            in metrics
        )
    finally:
        gw.stop()
