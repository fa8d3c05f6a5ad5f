"""``quotagate limits inspect`` shows what the next request would be decided against."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import redis

from harness import Gateway, policy

BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


def test_inspect_tenant_and_key_counters(tmp_path: Path, upstream: str) -> None:
    prefix = f"qgtest:{secrets.token_hex(6)}:"
    doc = policy(upstream)
    doc["store"] = {"url": "redis://127.0.0.1:6379/0", "prefix": prefix}
    doc["plans"]["free"]["limits"] = [
        {"scope": "key", "requests": 10, "per": "1m"},
        {"scope": "tenant", "requests": 100, "per": "1h", "algorithm": "sliding_window"},
    ]
    gw = Gateway(tmp_path, doc).start()
    try:
        first = gw.tenant_key("acme", "free")
        second = gw.tenant_key("acme", "free")
        for key, count in ((first, 3), (second, 2)):
            for _ in range(count):
                response = httpx.post(
                    gw.base_url + "/v1/chat/completions", json=BODY,
                    headers={"authorization": f"Bearer {key}"}, timeout=10,
                )  # fmt: skip
                assert response.status_code == 200
        rows = json.loads(gw.cli("limits", "inspect", "--tenant", "acme", "--json"))
        by_limit: dict[str, list[int]] = {}
        for row in rows:
            by_limit.setdefault(row["limit"], []).append(row["used"])
        assert sorted(by_limit["free.key-requests-1m"]) == [2, 3]
        assert by_limit["free.tenant-requests-1h-sliding"] == [5]

        first_id = first[3:15]
        rows = json.loads(gw.cli("limits", "inspect", "--key", first_id, "--json"))
        assert [(r["limit"], r["used"], r["remaining"]) for r in rows] == [
            ("free.key-requests-1m", 3, 7)
        ]
    finally:
        gw.stop()
        with redis.Redis() as client:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
