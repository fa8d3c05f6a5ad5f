"""Spend anomaly detection, end to end: a tenant's steady spend stays quiet; a spike
fires one signed webhook and throttles the tenant until an admin clears it.

Time constants are shrunk so that a baseline forms in seconds (window 0.5 s, baseline
4 s); the detector itself is unit-tested over hours on a fake clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from e2e_clients import CHAT_MODEL
from webhooks import Receiver

from harness import Gateway, policy

SECRET_ENV = "QUOTAGATE_ALERT_SECRET"
RATE = 600  # requests a minute per key on the plan
THROTTLE = 0.01  # → 6 a minute, on a counter of its own
BODY = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: str, receiver: Receiver
) -> Iterator[Gateway]:
    alerts = {"webhook_url": receiver.url, "secret_env": SECRET_ENV}
    doc = policy(upstream, accounting={"alerts": alerts})
    doc["observability"] = {
        "spend_anomaly": {"enabled": True, "window": "500ms", "baseline": "4s",
                          "warmup": "2s", "threshold": 4, "min_spend": 0,
                          "cooldown": "1h", "throttle": THROTTLE},
    }  # fmt: skip
    doc["plans"]["metered"] = {
        "models": [CHAT_MODEL],
        "limits": [{"scope": "key", "requests": RATE, "per": "1m"}],
    }
    gw = Gateway(tmp_path_factory.mktemp("anomaly"), doc, {SECRET_ENV: "whsec-anomaly"}).start()
    yield gw
    gw.stop()


def paced(client: httpx.Client, seconds: float, per_second: float) -> list[int]:
    """Steady traffic: one request every 1/per_second seconds, never catching up after
    a slow answer (a catch-up would itself be a burst)."""
    statuses, due, end = [], time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < end:
        statuses.append(client.post("/v1/chat/completions", json=BODY).status_code)
        due = max(due + 1 / per_second, time.monotonic())
        time.sleep(max(0.0, due - time.monotonic()))  # pacing the load, not awaiting
    return statuses


def burst(client: httpx.Client, n: int) -> list[int]:
    return [client.post("/v1/chat/completions", json=BODY).status_code for _ in range(n)]


def client_for(gw: Gateway, tenant: str) -> httpx.Client:
    key = gw.tenant_key(tenant, "metered")
    return httpx.Client(
        base_url=gw.base_url, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def tenant_id(gw: Gateway, name: str) -> str:
    tenants = json.loads(gw.cli("tenants", "list", "--json"))
    return str(next(t["id"] for t in tenants if t["name"] == name))


def test_steady_spend_stays_quiet(gateway: Gateway, receiver: Receiver) -> None:
    with client_for(gateway, "steady") as client:
        assert set(paced(client, seconds=6, per_second=6)) == {200}
    assert receiver.of(tenant_id(gateway, "steady")) == []


def test_a_spike_alerts_once_and_throttles_until_cleared(
    gateway: Gateway, receiver: Receiver
) -> None:
    with client_for(gateway, "spiky") as client:
        assert set(paced(client, seconds=3, per_second=4)) == {200}  # its baseline
        ident = tenant_id(gateway, "spiky")
        assert receiver.of(ident) == []
        burst(client, 60)  # ~15x its rate, as fast as one client goes
        delivery = receiver.wait_for(ident, lambda found: len(found) >= 1)[0]
        alert = delivery.alert
        assert alert["type"] == "spend.anomaly" and alert["tenant"]["name"] == "spiky"
        assert alert["ratio"] > 4 and alert["throttled_to"] == THROTTLE
        assert "x-quotagate-signature" in delivery.headers
        # Throttled to a hundredth of the plan's rate, on a counter of its own.
        after = burst(client, 10)
        assert 429 in after and after.count(200) <= RATE * THROTTLE
        token = json.loads(gateway.cli("admin-tokens", "create", "ops", "--json"))["token"]
        cleared = httpx.post(
            gateway.admin_url + "/admin/v1/rate-raises/clear",
            headers={"authorization": f"Bearer {token}"},
            json={"tenant": "spiky"},
            timeout=10,
        )
        assert cleared.status_code == 200 and cleared.json()["ended"] == 1
        assert burst(client, 5) == [200] * 5
    assert len(receiver.of(ident)) == 1  # once per cooldown, however long it lasted
    trail = json.loads(gateway.cli("audit", "--target", "spiky", "--json"))
    assert [e["action"] for e in trail][:2] == ["rate.clear", "rate.throttle"]
