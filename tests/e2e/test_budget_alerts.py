"""Quota and budget alert webhooks, end to end: a real receiver in this process, a real
gateway with ``accounting.alerts`` and its signing secret, the mock LLM upstream.

An alert goes out once per threshold per quota per period, not once per request past
it; it is signed; a receiver that fails is retried, and every attempt is recorded in
``qg_alert_deliveries``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_clients import CHAT_MODEL, messages, sdk
from webhooks import Delivery, Receiver

from harness import Gateway, policy
from quotagate.budget.alerts import verify
from redis_servers import start_redis

SECRET = "whsec-e2e-4b1d0c"
SECRET_ENV = "QUOTAGATE_ALERT_SECRET"
DEADLINE = 10.0  # a retried delivery waits up to 0.5 s of jittered backoff
TOKENS = 1000
BUDGET = 10_000  # micro-units: 0.01 USD


def alerts_policy(upstream: str, receiver: Receiver, **overrides: Any) -> dict[str, Any]:
    alerts = {"webhook_url": receiver.url, "secret_env": SECRET_ENV}
    doc = policy(upstream, accounting={"alerts": alerts}, **overrides)
    doc["plans"]["tokens-alerts"] = {
        "models": [CHAT_MODEL],
        "quotas": [{"scope": "tenant", "tokens": TOKENS, "per": "day", "alerts": [0.8, 0.9]}],
    }
    doc["plans"]["budget-alerts"] = {
        "models": ["gpt-4"],
        "budget": {"amount": BUDGET / 1e6, "per": "month", "alerts": [0.8, 0.9]},
    }
    return doc


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: str, receiver: Receiver
) -> Iterator[Gateway]:
    doc = alerts_policy(upstream, receiver)
    gw = Gateway(tmp_path_factory.mktemp("alerts"), doc, env={SECRET_ENV: SECRET}).start()
    yield gw
    gw.stop()


@pytest.fixture
def two_instances(tmp_path: Path, upstream: str, receiver: Receiver) -> Iterator[Gateway]:
    """A gateway and a replica sharing a private Redis store and the database."""
    redis = start_redis(tmp_path / "redis")
    doc = alerts_policy(upstream, receiver, store={"url": redis.url})
    gw = Gateway(tmp_path / "gateway", doc, env={SECRET_ENV: SECRET})
    try:
        gw.start()
        gw.replica()
        yield gw
    finally:
        gw.stop()
        redis.stop()


# --- helpers ------------------------------------------------------------------------------

_serial = itertools.count()


@dataclass(frozen=True)
class Account:
    name: str
    tenant_id: str
    key: str


def open_account(gw: Gateway, plan: str) -> Account:
    name = f"{plan}-{next(_serial)}"
    tenant = json.loads(gw.cli("tenants", "create", name, "--plan", plan, "--json"))
    key = json.loads(gw.cli("keys", "create", "--tenant", name, "--json"))["key"]
    return Account(name, tenant["id"], key)


def ask(client: openai.OpenAI, tokens: int, max_tokens: int, model: str = CHAT_MODEL) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages(f"[[mock:tokens={tokens:04d}]] hi"), max_tokens=max_tokens
    )


WARNING = re.compile(r'"(?P<quota>[^"]+)"; used=(?P<used>\d+); limit=(?P<limit>\d+); .*'
                     r"threshold=(?P<threshold>\d+)%")  # fmt: skip


def warning(raw: Any) -> tuple[int, int] | None:
    """(threshold %, used) of the response's quota warning, or None."""
    header = raw.headers.get("x-quotagate-quota-warning")
    if header is None:
        return None
    found = WARNING.match(header)
    assert found, header
    return int(found["threshold"]), int(found["used"])


def assert_signed(delivery: Delivery) -> None:
    header = delivery.headers["x-quotagate-signature"]
    assert verify(SECRET.encode(), header, delivery.body, now=time.time())
    assert not verify(b"another-secret", header, delivery.body, now=time.time())
    # And by hand, as a receiver without quotagate would check it.
    fields = dict(item.split("=", 1) for item in header.split(","))
    signed = f"{fields['t']}.".encode() + delivery.body
    expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 60
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["x-quotagate-alert-id"] == delivery.alert["id"]


def attempts_recorded(gw: Gateway, tenant_id: str, count: int) -> list[dict[str, Any]]:
    """The tenant's rows in qg_alert_deliveries once there are ``count`` (each attempt is
    recorded after its answer, so the rows may trail the receiver a little)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        with closing(sqlite3.connect(gw.tmp / "qg.db", timeout=5)) as db:
            db.row_factory = sqlite3.Row
            rows = [
                dict(r)
                for r in db.execute(
                    "SELECT * FROM qg_alert_deliveries WHERE tenant_id = ? ORDER BY id",
                    (tenant_id,),
                )
            ]
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} of {count} attempts recorded: {rows}"
        time.sleep(0.05)  # poll interval, not a wait for the outcome


# --- tests --------------------------------------------------------------------------------


def client_at(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=10)


def spend_past_both_thresholds(clients: list[openai.OpenAI]) -> list[tuple[int, Any]]:
    """From ~71% of the token quota, small steps (taking turns over ``clients``) past
    80%, then 90%, until it runs out: (client index, response) of each answer."""
    answers = [(0, ask(clients[0], 700, 700))]
    assert warning(answers[0][1]) is None  # below both thresholds
    for step in range(1, 20):
        turn = step % len(clients)
        try:
            answers.append((turn, ask(clients[turn], 20, 20)))
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            break
    return answers


def sent_after_marker(gw: Gateway, receiver: Receiver, base_url: str) -> None:
    """Another tenant's alert, raised after every request before it. Once it has arrived,
    a duplicate of an earlier alert (scheduled before it) would have arrived too."""
    marker = open_account(gw, "tokens-alerts")
    assert warning(ask(client_at(base_url, marker.key), 850, 850)) is not None
    receiver.wait_for(marker.tenant_id, lambda found: len(found) >= 1)


def test_each_threshold_alerts_once_not_once_per_request(
    gateway: Gateway, receiver: Receiver
) -> None:
    account = open_account(gateway, "tokens-alerts")
    answers = [raw for _, raw in spend_past_both_thresholds([sdk(gateway, account.key)])]
    warned = [w for w in map(warning, answers) if w is not None]
    thresholds = [t for t, _ in warned]
    assert thresholds.count(80) >= 2 and thresholds.count(90) >= 2, thresholds  # many requests
    crossed = {t: used for t, used in reversed(warned)}  # the first response past each
    sent_after_marker(gateway, receiver, gateway.base_url)

    deliveries = receiver.wait_for(account.tenant_id, lambda found: len(found) >= 2)
    alerts = [d.alert for d in deliveries]
    assert sorted(a["threshold"] for a in alerts) == [0.8, 0.9], alerts  # once each
    for delivery in deliveries:
        assert_signed(delivery)
        alert = delivery.alert
        assert alert["type"] == "quota.threshold"
        assert alert["tenant"] == {"id": account.tenant_id, "name": account.name}
        assert alert["quota"] == "tokens-alerts.tenant-tokens-day"
        assert (alert["unit"], alert["limit"], alert["currency"]) == ("tokens", TOKENS, None)
        assert alert["used"] == crossed[round(alert["threshold"] * 100)]
        assert alert["remaining"] == TOKENS - alert["used"]
        assert alert["used"] >= alert["threshold"] * TOKENS
    assert len({a["id"] for a in alerts}) == 2
    rows = attempts_recorded(gateway, account.tenant_id, 2)
    assert [(r["attempt"], r["status_code"], r["delivered"]) for r in rows] == [(1, 200, 1)] * 2
    assert sorted(r["threshold"] for r in rows) == [0.8, 0.9]
    assert {r["alert_id"] for r in rows} == {a["id"] for a in alerts}
    assert all(r["url"] == receiver.url for r in rows)


def test_a_failed_delivery_is_retried_and_every_attempt_recorded(
    gateway: Gateway, receiver: Receiver
) -> None:
    account = open_account(gateway, "budget-alerts")
    receiver.fail_first(account.tenant_id, 500)
    client = sdk(gateway, account.key)
    # 130 output tokens of gpt-4 reserve about 8,160 of the 10,000 micro-units: past 80%.
    raw = ask(client, 130, 130, model="gpt-4")
    assert warning(raw) is not None and warning(raw)[0] == 80  # type: ignore[index]
    used = warning(raw)[1]  # type: ignore[index]
    deliveries = receiver.wait_for(account.tenant_id, lambda found: len(found) >= 2)
    assert [d.answered for d in deliveries] == [500, 200]
    first, retry = deliveries
    assert retry.body == first.body  # the same alert, re-sent
    assert retry.headers["x-quotagate-alert-id"] == first.headers["x-quotagate-alert-id"]
    for delivery in deliveries:
        assert_signed(delivery)
    alert = retry.alert
    assert (alert["quota"], alert["unit"], alert["threshold"]) == (
        "budget-alerts.budget-month",
        "micros",
        0.8,
    )
    assert (alert["limit"], alert["used"], alert["currency"]) == (BUDGET, used, "USD")
    assert alert["limit_amount"] == "0.010000"
    assert alert["used_amount"] == f"0.{used:06d}"
    rows = attempts_recorded(gateway, account.tenant_id, 2)
    assert [(r["attempt"], r["status_code"], r["delivered"]) for r in rows] == [
        (1, 500, 0),
        (2, 200, 1),
    ]
    assert rows[0]["alert_id"] == rows[1]["alert_id"] == alert["id"]


def test_instances_sharing_a_store_alert_once_between_them(
    two_instances: Gateway, receiver: Receiver
) -> None:
    gw, replica = two_instances, two_instances.replicas[0]
    account = open_account(gw, "tokens-alerts")
    clients = [client_at(gw.base_url, account.key), client_at(replica.base_url, account.key)]
    answers = spend_past_both_thresholds(clients)
    warned_on = {(turn, w[0]) for turn, raw in answers if (w := warning(raw)) is not None}
    # Both instances answered past each threshold: each could have sent its own alert.
    assert warned_on == {(0, 80), (1, 80), (0, 90), (1, 90)}, warned_on
    sent_after_marker(gw, receiver, replica.base_url)
    deliveries = receiver.wait_for(account.tenant_id, lambda found: len(found) >= 2)
    assert sorted(d.alert["threshold"] for d in deliveries) == [0.8, 0.9]
    for delivery in deliveries:
        assert_signed(delivery)
    rows = attempts_recorded(gw, account.tenant_id, 2)
    assert len(rows) == 2 and all(r["delivered"] for r in rows)
