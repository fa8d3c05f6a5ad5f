"""``quotagate ledger reconcile``: the live Redis counters against the ledger; no drift
after real traffic, and a counter changed behind the gateway's back is reported (exit 1)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from harness import QUOTAGATE, Gateway, policy

REDIS_URL = "redis://127.0.0.1:6379/0"
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "count me"}]}


@pytest.fixture
def gateway(tmp_path: Path, upstream: str) -> Iterator[Gateway]:
    doc = policy(upstream)
    doc["store"] = {"url": REDIS_URL, "prefix": f"qgtest:{secrets.token_hex(6)}:"}
    doc["plans"]["metered"] = {
        "models": ["gpt-3.5-turbo"],
        "quotas": [{"scope": "tenant", "tokens": 100_000, "per": "day"}],
        "budget": {"amount": 10, "per": "month"},
    }
    gw = Gateway(tmp_path, doc).start()
    yield gw
    gw.stop()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=doc["store"]["prefix"] + "*"):
        client.delete(key)


def reconcile(gw: Gateway) -> tuple[int, list[dict[str, object]]]:
    result = subprocess.run(
        [*QUOTAGATE, "ledger", "reconcile", "--json", "--config", str(gw.config)],
        env=gw.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def ledger_rows(gw: Gateway, n: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        with closing(sqlite3.connect(gw.tmp / "qg.db", timeout=5)) as db:
            found = db.execute("SELECT count(*) FROM qg_ledger WHERE status = 'ok'").fetchone()[0]
        if found >= n:
            return
        assert time.monotonic() < deadline, f"{found} ledger rows, wanted {n}"
        time.sleep(0.05)  # poll interval, not a wait for the outcome


def test_counters_match_the_ledger_until_one_is_changed_behind_its_back(
    gateway: Gateway,
) -> None:
    key = gateway.tenant_key("reconciled", "metered")
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        for _ in range(5):
            answer = client.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 200, answer.text
    ledger_rows(gateway, 5)
    status, drifts = reconcile(gateway)
    assert status == 0 and {d["unit"] for d in drifts} == {"tokens", "micros"}
    for drift in drifts:
        assert drift["drift"] == 0 and drift["in_flight"] == 0
        assert drift["counter"] == drift["ledger"] and int(drift["counter"]) > 0  # type: ignore[call-overload]

    store = redis.Redis.from_url(REDIS_URL)
    prefix = gateway.doc["store"]["prefix"]
    (counter,) = [k for k in store.scan_iter(match=prefix + "rl:*") if b"tokens-day" in k]
    store.hincrby(counter, "c", 7)  # a write the ledger never saw
    status, drifts = reconcile(gateway)
    assert status == 1
    by_unit = {d["unit"]: d for d in drifts}
    assert by_unit["tokens"]["drift"] == 7 and by_unit["micros"]["drift"] == 0


def test_in_flight_reservations_count_in_the_period_they_were_admitted_in(
    gateway: Gateway,
) -> None:
    """Just after midnight, a request admitted yesterday and still running holds
    yesterday's counter: it is not subtracted from today's (which would show as drift)."""
    gateway.tenant_key("night-owl", "metered")
    with closing(sqlite3.connect(gateway.tmp / "qg.db", timeout=5)) as db:
        (tenant_id,) = db.execute("SELECT id FROM qg_tenants WHERE name = 'night-owl'").fetchone()
    store = redis.Redis.from_url(REDIS_URL)
    reservations = f"{gateway.doc['store']['prefix']}rs:{{t:{tenant_id}}}"
    now = time.time()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = midnight.timestamp() - 60  # a minute before today's period (UTC tenant)
    month = midnight.replace(day=1).timestamp()  # the budget's period
    for name, at, tokens in (("yesterday", yesterday, 700), ("today", now, 40)):
        member = json.dumps({"id": name, "at": at, "tenant": tenant_id, "model": "gpt-3.5-turbo",
                             "tokens": tokens, "micros": tokens * 10})  # fmt: skip
        store.zadd(reservations, {member: (now + 600) * 1e6})
    _, drifts = reconcile(gateway)
    mine = {d["unit"]: d for d in drifts if d["tenant"] == "night-owl"}
    assert mine["tokens"]["in_flight"] == 40  # the daily token quota: today's only
    # The monthly budget: both, unless today is the 1st (then yesterday was last month).
    assert mine["micros"]["in_flight"] == 400 + (7000 if yesterday >= month else 0)
