"""Limits that follow model health: when time to first token climbs on one instance,
every instance sharing the store halves the free plan's rate limit (header and metric
say so), and lifts it again once the model has recovered."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from harness import SHARED_REDIS, Gateway, policy, redis_prefix, start_mock
from metrics_text import scrape, total


def ask(base_url: str, key: str, stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-3.5-turbo", "stream": stream, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30) as r:  # fmt: skip
        r.read()
        return r


def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)  # poll interval, not a wait for the outcome


def test_slow_first_tokens_halve_the_free_rate_on_every_instance(tmp_path: Path) -> None:
    mock = start_mock(tmp_path)
    doc = policy(mock.base_url + "/v1")
    doc["store"] = {"url": SHARED_REDIS, "prefix": redis_prefix()}
    doc["plans"]["free"]["limits"] = [{"scope": "key", "requests": 1000, "per": "1m"}]
    doc["shaping"] = {"pressure": {"ttft_p95_above": "200ms", "window": "2s",
                                   "scale": {"free": 0.5}}}  # fmt: skip
    gw = Gateway(tmp_path / "gw", doc).start()
    try:
        other = gw.replica()
        gw.cli("tenants", "create", "t1", "--plan", "free")
        key = gw.cli("keys", "create", "--tenant", "t1").strip().splitlines()[-1]
        calm = ask(other.base_url, key)
        assert calm.headers["x-ratelimit-limit-requests"] == "1000"
        assert "x-quotagate-limit-factor" not in calm.headers

        httpx.post(f"{mock.base_url}/_mock/faults", json={"ttft_ms": 400}, timeout=5)
        for _ in range(3):  # slow first tokens, seen by the first instance only
            assert ask(gw.base_url, key, stream=True).status_code == 200

        def factor_on_other() -> bool:
            return ask(other.base_url, key).headers.get("x-quotagate-limit-factor") == "0.5"

        until(factor_on_other, 5.0, "the other instance never scaled the free plan")
        scaled = ask(other.base_url, key)
        assert scaled.headers["x-ratelimit-limit-requests"] == "500"
        factor = total(scrape(gw.admin_url), "quotagate_limit_health_factor", plan="free")
        assert factor == 0.5

        httpx.post(f"{mock.base_url}/_mock/faults", json={"ttft_ms": 0}, timeout=5)
        until(lambda: not factor_on_other(), 10.0, "the free plan's rate never came back")
        assert ask(other.base_url, key).headers["x-ratelimit-limit-requests"] == "1000"
    finally:
        gw.stop()
        mock.stop()


def test_a_caller_near_its_limit_gets_no_fresh_allowance_when_pressure_scales_it(
    tmp_path: Path,
) -> None:
    """8 requests a minute; a key that has used 6 is, at half the rate, past most of its
    4: a tightening holds at once (a fresh scaled bucket would let 4 more through)."""
    mock = start_mock(tmp_path)
    prefix = redis_prefix()
    doc = policy(mock.base_url + "/v1")
    doc["store"] = {"url": SHARED_REDIS, "prefix": prefix}
    doc["plans"]["free"]["limits"] = [{"scope": "key", "requests": 8, "per": "1m"}]
    doc["shaping"] = {"pressure": {"ttft_p95_above": "200ms", "window": "10s",
                                   "scale": {"free": 0.5}}}  # fmt: skip
    gw = Gateway(tmp_path / "gw", doc).start()
    try:
        busy, slow = gw.tenant_key("t1", "free"), gw.tenant_key("t2", "free")
        for _ in range(6):
            assert ask(gw.base_url, busy).status_code == 200
        httpx.post(f"{mock.base_url}/_mock/faults", json={"ttft_ms": 400}, timeout=5)
        for _ in range(3):  # slow first tokens on another tenant's key
            assert ask(gw.base_url, slow, stream=True).status_code == 200

        def scaled() -> bool:
            metrics = scrape(gw.admin_url)
            return total(metrics, "quotagate_limit_health_factor", plan="free") == 0.5

        until(scaled, 5.0, "the free plan was never scaled")
        httpx.post(f"{mock.base_url}/_mock/faults", json={"ttft_ms": 0}, timeout=5)
        answers = [ask(gw.base_url, busy) for _ in range(4)]
        assert all(a.headers.get("x-quotagate-limit-factor") == "0.5" for a in answers)
        allowed = sum(a.status_code == 200 for a in answers)
        # 6 of 8 used is 3 of 4 at half the rate: one more, two if the bucket drained a
        # little meanwhile (one request every 15 s at the scaled rate).
        assert 1 <= allowed <= 2, [a.status_code for a in answers]
    finally:
        gw.stop()
        mock.stop()
        with redis.Redis.from_url(SHARED_REDIS) as client:
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)
