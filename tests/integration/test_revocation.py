"""A revoked key, a suspended tenant or a revoked OAuth client stops on every instance
within a second, although each caches credentials for a minute: the change is
published on Redis and every instance drops what went stale, for API keys and JWTs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import SHARED_REDIS, Gateway, Process, policy, redis_prefix

WITHIN = 1.0  # seconds: the bound
CACHE_TTL = "60s"  # far longer than WITHIN: only the invalidation explains a fast stop


@pytest.fixture
def fleet(tmp_path: Path, upstream: str) -> Iterator[tuple[Gateway, list[Process]]]:
    doc = policy(upstream)
    doc["store"] = {"url": SHARED_REDIS, "prefix": redis_prefix()}
    doc["auth"] = {"key_cache_ttl": CACHE_TTL, "oauth_issuer": {"enabled": True}}
    gw = Gateway(tmp_path, doc).start()
    replicas = [gw.replica(), gw.replica()]
    yield gw, replicas
    gw.stop()


def new_key(gw: Gateway, tenant: str) -> tuple[str, str]:
    gw.cli("tenants", "create", tenant, "--plan", "pro")
    issued = json.loads(gw.cli("keys", "create", "--tenant", tenant, "--json"))
    return issued["key_id"], issued["key"]


def status(base_url: str, key: str) -> int:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(base_url + "/v1/models", headers=headers, timeout=5).status_code


def refused_after(urls: list[str], key: str, since: float) -> list[float]:
    """Seconds from ``since`` until each instance answers 401 (polled every 20 ms)."""
    took = []
    for url in urls:
        while status(url, key) != 401:
            assert time.monotonic() - since < 10 * WITHIN, f"{url} still accepts the key"
            time.sleep(0.02)  # poll interval, not a wait for the outcome
        took.append(time.monotonic() - since)
    return took


def test_a_key_revoked_through_the_admin_api_stops_everywhere_within_a_second(
    fleet: tuple[Gateway, list[Process]],
) -> None:
    gw, replicas = fleet
    urls = [gw.base_url] + [r.base_url for r in replicas]
    key_id, key = new_key(gw, "revoked-by-api")
    assert [status(u, key) for u in urls] == [200, 200, 200]  # cached on every instance
    admin_call(gw, "POST", f"/admin/v1/keys/{key_id}/revoke")
    took = refused_after(urls, key, time.monotonic())
    assert max(took) < WITHIN, took


def test_a_key_revoked_with_the_cli_stops_everywhere_within_a_second(
    fleet: tuple[Gateway, list[Process]],
) -> None:
    gw, replicas = fleet
    urls = [gw.base_url] + [r.base_url for r in replicas]
    key_id, key = new_key(gw, "revoked-by-cli")
    _, other = new_key(gw, "untouched")
    assert [status(u, key) for u in urls] == [200, 200, 200]
    assert [status(u, other) for u in urls] == [200, 200, 200]
    gw.cli("keys", "revoke", key_id)
    took = refused_after(urls, key, time.monotonic())
    assert max(took) < WITHIN, took
    assert [status(u, other) for u in urls] == [200, 200, 200]  # only that key


def admin_call(gw: Gateway, method: str, path: str, body: dict[str, str] | None = None) -> None:
    token = json.loads(gw.cli("admin-tokens", "create", "ops", "--json"))["token"]
    answer = httpx.request(
        method, gw.admin_url + path, json=body, timeout=10,
        headers={"authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


def jwt_for(gw: Gateway, tenant: str) -> tuple[str, str]:
    """(client id, access token) of a new OAuth client of ``tenant``."""
    gw.cli("tenants", "create", tenant, "--plan", "pro")
    client = json.loads(gw.cli("clients", "create", "--tenant", tenant, "--json"))
    form = {"grant_type": "client_credentials", "client_id": client["client_id"],
            "client_secret": client["client_secret"]}  # fmt: skip
    issued = httpx.post(gw.base_url + "/oauth/token", data=form, timeout=10)
    assert issued.status_code == 200, issued.text
    return client["client_id"], issued.json()["access_token"]


def test_a_suspended_tenant_stops_its_jwts_everywhere_within_a_second(
    fleet: tuple[Gateway, list[Process]],
) -> None:
    gw, replicas = fleet
    urls = [gw.base_url] + [r.base_url for r in replicas]
    _, token = jwt_for(gw, "suspended-jwt")
    assert [status(u, token) for u in urls] == [200, 200, 200]  # verified and cached
    admin_call(gw, "PATCH", "/admin/v1/tenants/suspended-jwt", {"status": "suspended"})
    took = refused_after(urls, token, time.monotonic())
    assert max(took) < WITHIN, took


def test_a_revoked_client_stops_its_tokens_everywhere_within_a_second(
    fleet: tuple[Gateway, list[Process]],
) -> None:
    gw, replicas = fleet
    urls = [gw.base_url] + [r.base_url for r in replicas]
    client_id, token = jwt_for(gw, "revoked-client")
    assert [status(u, token) for u in urls] == [200, 200, 200]
    admin_call(gw, "POST", f"/admin/v1/oauth-clients/{client_id}/revoke")
    took = refused_after(urls, token, time.monotonic())
    assert max(took) < WITHIN, took
