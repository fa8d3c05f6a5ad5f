"""The spike experiment (issue: traffic shaping under pressure), shared by its test
and ``bench/flood.py``: a mock LLM with 4 slots of 50 ms (80 req/s), a gateway whose
deployment takes at most those 4, steady enterprise traffic at 10 req/s, then the same
beside a flood of 800 req/s (10x the upstream): 8 free keys at 40 req/s each from
their own addresses, and 480 req/s from one address with a junk key."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness import Gateway, policy, start_mock
from metrics_text import scrape, total
from quotagate.demo.flood import Outcome, Stream, flood, from_json

CAPACITY = 4
SERVICE_MS = 50
ADMIN_TOKEN = f"qga-bootstrap-{secrets.token_hex(8)}"


@dataclass
class Spike:
    unloaded: Outcome  # enterprise alone
    loaded: dict[str, Outcome]  # enterprise, free, one address: during the flood
    peak_in_flight: int  # the most requests the upstream had at once
    preauth_refused: float


def spike_policy(upstream: str) -> dict[str, Any]:
    doc = policy(upstream)
    doc["server"]["trusted_proxies"] = ["127.0.0.1/32"]  # the flood's addresses: in XFF
    doc["models"]["gpt-3.5-turbo"]["deployments"][0].update(
        {"name": "gpu-1", "max_concurrency": CAPACITY}
    )
    doc["plans"]["free"].update(
        {"priority": 0, "limits": [{"scope": "key", "requests": 20, "per": "1s"}]}
    )
    doc["plans"]["enterprise"].update({"priority": 10, "limits": []})
    doc["shaping"] = {
        "queue": {
            "max_length": 32,
            "max_wait": {"interactive": "1s"},
            "reserve": {"slots": 1, "priority": 10},
        },
        "ip_guard": {"requests": 50, "per": "1s"},
    }
    return doc


def issue_keys(gw: Gateway, plan: str, count: int) -> list[str]:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    tenant = f"{plan}-{secrets.token_hex(3)}"
    made = httpx.post(
        gw.admin_url + "/admin/v1/tenants", headers=headers,
        json={"name": tenant, "plan": plan}, timeout=10,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    return [
        httpx.post(
            gw.admin_url + "/admin/v1/keys", headers=headers, json={"tenant": tenant}, timeout=10
        ).json()["key"]
        for _ in range(count)
    ]


def summary(name: str, o: Outcome) -> str:
    return (
        f"{name}: sent {o.sent}, statuses {dict(o.statuses)}, codes {dict(o.codes)}, "
        f"p50 {o.percentile(0.5) * 1000:.0f} ms, p99 {o.percentile(0.99) * 1000:.0f} ms"
    )


def run_spike(tmp: Path, seconds: float) -> Spike:
    mock = start_mock(tmp)
    httpx.post(
        f"{mock.base_url}/_mock/faults", json={"ttft_ms": SERVICE_MS, "capacity": CAPACITY},
        timeout=5,
    ).raise_for_status()  # fmt: skip
    gw = Gateway(
        tmp / "gw", spike_policy(mock.base_url + "/v1"), {"QUOTAGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    try:
        gw.start()
        enterprise = Stream("enterprise", issue_keys(gw, "enterprise", 1)[0], "10.1.1.1", 10)
        unloaded = asyncio.run(flood(gw.base_url, [enterprise], seconds))["enterprise"]
        free = [
            Stream("free", key, f"10.0.0.{i}", 40)
            for i, key in enumerate(issue_keys(gw, "free", 8))
        ]
        one_address = Stream("one address", "qg-flood-junk-key", "10.9.9.9", 480)
        # The flood comes from a process of its own: enterprise's latency is measured
        # on an event loop that is not busy sending 800 requests a second.
        specs = [f"{s.name},{s.key},{s.address},{s.rate:g}" for s in [*free, one_address]]
        flooder = subprocess.Popen(
            [sys.executable, "-m", "quotagate.demo.flood", gw.base_url, f"{seconds:g}", *specs],
            stdout=subprocess.PIPE,
        )
        loaded = asyncio.run(flood(gw.base_url, [enterprise], seconds))
        out, _ = flooder.communicate(timeout=seconds + 60)
        assert flooder.returncode == 0
        loaded.update(from_json(json.loads(out)))
        peak = int(httpx.get(f"{mock.base_url}/_mock/load", timeout=5).json()["peak_in_flight"])
        refused = total(scrape(gw.admin_url), "quotagate_preauth_refused_total")
        return Spike(unloaded, loaded, peak, refused)
    finally:
        gw.stop()
        mock.stop()
