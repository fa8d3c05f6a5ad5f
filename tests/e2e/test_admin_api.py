"""The admin API on its own listener: tokens, tenants, keys, credits, the audit log.

A real gateway process; the admin API is driven over HTTP with an admin token made by
the CLI, and its effects are checked on the proxy with the official SDK.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import httpx
import openai
import pytest
from e2e_clients import CHAT_MODEL, messages, sdk

from harness import Gateway, policy

HOURLY = 5  # requests an hour per key on plan "hourly"
DAILY = 4 * HOURLY  # requests a day per tenant on plan "hourly"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    doc = policy(upstream)
    doc["plans"]["hourly"] = {
        "models": [CHAT_MODEL],
        "limits": [{"scope": "key", "requests": HOURLY, "per": "1h"}],
        "quotas": [{"scope": "tenant", "requests": DAILY, "per": "day"}],
    }
    doc["auth"] = {"key_cache_ttl": "200ms", "oauth_issuer": {"enabled": True}}
    gw = Gateway(tmp_path_factory.mktemp("admin"), doc).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def token(gateway: Gateway) -> str:
    return str(json.loads(gateway.cli("admin-tokens", "create", "ops", "--json"))["token"])


@pytest.fixture(scope="module")
def admin(gateway: Gateway, token: str) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway.admin_url, headers=headers, timeout=10) as client:
        yield client


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def chat_ok(gw: Gateway, key: str) -> bool:
    try:
        sdk(gw, key).chat.completions.create(model=CHAT_MODEL, messages=messages("hi"))
    except openai.AuthenticationError:
        return False
    return True


def test_only_an_admin_token_opens_the_admin_api(gateway: Gateway, admin: httpx.Client) -> None:
    tenant_key = gateway.tenant_key("outsider", "pro")
    anonymous = httpx.get(gateway.admin_url + "/admin/v1/tenants", timeout=10)
    assert error(anonymous, 401)["code"] == "missing_admin_token"
    for credential in (tenant_key, "qga-000000000000_forged", "x" * 5000):
        refused = httpx.get(
            gateway.admin_url + "/admin/v1/tenants",
            headers={"authorization": f"Bearer {credential}"},
            timeout=10,
        )
        assert error(refused, 401)["code"] == "invalid_admin_token"
    # Not on the public listener at all, with any credential.
    public = httpx.get(gateway.base_url + "/admin/v1/tenants", headers=admin.headers, timeout=10)
    assert public.status_code == 404
    assert admin.get("/admin/v1/tenants").status_code == 200


def test_tenants_and_keys_round_trip_through_the_proxy(
    gateway: Gateway, admin: httpx.Client
) -> None:
    created = admin.post("/admin/v1/tenants", json={"name": "acme", "plan": "pro"})
    assert created.status_code == 201 and created.json()["plan"] == "pro"
    assert error(admin.post("/admin/v1/tenants", json={"name": "acme", "plan": "pro"}), 409)
    bad_plan = error(admin.post("/admin/v1/tenants", json={"name": "x", "plan": "gold"}), 422)
    assert bad_plan["param"] == "plan"
    assert error(admin.post("/admin/v1/tenants", json={"name": "y"}), 422)["param"] == "plan"

    key = admin.post("/admin/v1/keys", json={"tenant": "acme", "name": "ci"}).json()
    assert chat_ok(gateway, key["key"])
    listed = admin.get("/admin/v1/keys", params={"tenant": "acme"}).json()["data"]
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    assert "key" not in listed[0] and key["key"] not in json.dumps(listed)

    # Suspended: every key of the tenant stops at once on this instance; back again.
    assert admin.patch("/admin/v1/tenants/acme", json={"status": "suspended"}).status_code == 200
    assert not chat_ok(gateway, key["key"])
    assert admin.patch("/admin/v1/tenants/acme", json={"status": "active"}).status_code == 200
    assert chat_ok(gateway, key["key"])

    revoked = admin.post(f"/admin/v1/keys/{key['key_id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert not chat_ok(gateway, key["key"])
    assert error(admin.post(f"/admin/v1/keys/{key['key_id']}/revoke"), 404)


def test_rotation_keeps_the_old_key_for_the_overlap_only(
    gateway: Gateway, admin: httpx.Client
) -> None:
    admin.post("/admin/v1/tenants", json={"name": "rotating", "plan": "pro"})
    first = admin.post("/admin/v1/keys", json={"tenant": "rotating"}).json()
    second = admin.post(
        f"/admin/v1/keys/{first['key_id']}/rotate", json={"overlap_seconds": 3600}
    ).json()
    assert second["replaces"] == first["key_id"] and second["key"] != first["key"]
    assert chat_ok(gateway, first["key"]) and chat_ok(gateway, second["key"])
    # Rotated again without overlap: the second key stops now, the third works.
    third = admin.post(
        f"/admin/v1/keys/{second['key_id']}/rotate", json={"overlap_seconds": 0}
    ).json()
    assert not chat_ok(gateway, second["key"]) and chat_ok(gateway, third["key"])
    # A key already being rotated is not rotated twice.
    assert error(
        admin.post(f"/admin/v1/keys/{first['key_id']}/rotate", json={"overlap_seconds": 5}), 409
    )


def test_every_change_is_audited_without_a_secret(gateway: Gateway, admin: httpx.Client) -> None:
    admin.post("/admin/v1/tenants", json={"name": "audited", "plan": "free"})
    key = admin.post("/admin/v1/keys", json={"tenant": "audited"}).json()
    admin.patch("/admin/v1/tenants/audited", json={"plan": "pro"})
    credit = admin.post(
        "/admin/v1/credits", json={"tenant": "audited", "kind": "topup", "tokens": 5000}
    )
    assert credit.status_code == 201
    admin.post(f"/admin/v1/keys/{key['key_id']}/revoke")

    entries = admin.get("/admin/v1/audit", params={"limit": 1000}).json()["data"]
    mine = [e for e in entries if e["target"] in ("audited", key["key_id"])]
    assert [e["action"] for e in reversed(mine)] == [
        "tenant.create", "key.create", "tenant.update", "credit.add", "key.revoke",
    ]  # fmt: skip
    assert {e["actor"] for e in mine} == {"token:ops"}
    change = next(e for e in mine if e["action"] == "tenant.update")
    assert (change["before"]["plan"], change["after"]["plan"]) == ("free", "pro")
    assert key["key"] not in json.dumps(entries)
    # The CLI's changes are audited too, by the operator's login name.
    cli = [e for e in entries if e["action"] == "admin_token.create"]
    assert cli and all(e["actor"].startswith("cli:") for e in cli)
    assert token_secret_free(entries)
    only = admin.get("/admin/v1/audit", params={"target": key["key_id"]}).json()["data"]
    assert {e["action"] for e in only} == {"key.create", "key.revoke"}


def token_secret_free(entries: list[dict[str, Any]]) -> bool:
    return "qga-" not in json.dumps(entries)  # tokens appear by id only


def test_the_database_holds_no_plaintext_token_or_key(
    gateway: Gateway, admin: httpx.Client, token: str
) -> None:
    admin.post("/admin/v1/tenants", json={"name": "dumped", "plan": "pro"})
    key = admin.post("/admin/v1/keys", json={"tenant": "dumped"}).json()["key"]
    with closing(sqlite3.connect(gateway.tmp / "qg.db")) as db:
        dump = "\n".join(db.iterdump())
    assert token not in dump and token.split("_", 1)[1] not in dump
    assert key not in dump and key.split("_", 1)[1] not in dump


def test_a_tenant_key_is_refused_on_every_admin_route(
    gateway: Gateway, admin: httpx.Client
) -> None:
    tenant_key = gateway.tenant_key("prober", "pro")
    doc = admin.get("/admin/openapi.json").json()
    tried = 0
    with httpx.Client(base_url=gateway.admin_url, timeout=10) as client:
        for path, operations in doc["paths"].items():
            url = re.sub(r"\{[^}]+\}", "x", path)
            for method in operations:
                for headers in (
                    {"authorization": f"Bearer {tenant_key}"},
                    {"authorization": f"Basic {tenant_key}"},
                    {"x-api-key": tenant_key},
                ):
                    answer = client.request(method.upper(), url, headers=headers, json={})
                    assert answer.status_code == 401, (method, path, answer.text)
                    tried += 1
    assert tried >= 3 * 15


def test_the_openapi_document_describes_every_route(admin: httpx.Client) -> None:
    doc = admin.get("/admin/openapi.json").json()
    assert {
        "/admin/v1/tenants", "/admin/v1/tenants/{name}", "/admin/v1/keys",
        "/admin/v1/keys/{key_id}/revoke", "/admin/v1/keys/{key_id}/rotate",
        "/admin/v1/credits", "/admin/v1/usage", "/admin/v1/audit",
    } <= set(doc["paths"])  # fmt: skip


def statuses(gw: Gateway, key: str, n: int) -> list[int]:
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.base_url, headers=headers, timeout=10) as client:
        return [client.post("/v1/chat/completions", json=body).status_code for _ in range(n)]


def bypassed(gw: Gateway) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("quotagate_limit_bypassed_total"))
    return float(line.split()[-1])


def test_an_emergency_bypass_lifts_every_limit_of_one_key_and_is_audited(
    gateway: Gateway, admin: httpx.Client
) -> None:
    admin.post("/admin/v1/tenants", json={"name": "critical", "plan": "hourly"})
    key = admin.post("/admin/v1/keys", json={"tenant": "critical", "name": "pager"}).json()
    other = admin.post("/admin/v1/keys", json={"tenant": "critical"}).json()
    assert statuses(gateway, key["key"], HOURLY + 1) == [200] * HOURLY + [429]
    before = bypassed(gateway)
    on = admin.post(
        f"/admin/v1/keys/{key['key_id']}/bypass", json={"enabled": True, "reason": "incident 42"}
    )
    assert on.status_code == 200 and on.json()["bypass_limits"] is True
    # Past the key's hourly rate and the tenant's daily quota: all served.
    assert statuses(gateway, key["key"], DAILY + 2) == [200] * (DAILY + 2)
    assert bypassed(gateway) - before == DAILY + 2
    # Only that key: the tenant's other key keeps its limits (and the bypassed
    # requests were not counted against the tenant's quota).
    assert statuses(gateway, other["key"], HOURLY + 1) == [200] * HOURLY + [429]
    off = admin.post(
        f"/admin/v1/keys/{key['key_id']}/bypass", json={"enabled": False, "reason": "resolved"}
    )
    assert off.json()["bypass_limits"] is False
    assert statuses(gateway, key["key"], 1) == [429]
    audit = admin.get("/admin/v1/audit", params={"target": key["key_id"]}).json()["data"]
    assert [e["action"] for e in audit[:2]] == ["key.bypass_off", "key.bypass_on"]
    assert audit[1]["after"]["reason"] == "incident 42"


def test_a_temporary_rate_raise_gives_the_tenant_more_until_it_expires(
    gateway: Gateway, admin: httpx.Client
) -> None:
    admin.post("/admin/v1/tenants", json={"name": "launching", "plan": "hourly"})
    key = admin.post("/admin/v1/keys", json={"tenant": "launching"}).json()["key"]
    assert statuses(gateway, key, HOURLY + 1) == [200] * HOURLY + [429]
    raised = admin.post(
        "/admin/v1/rate-raises", json={"tenant": "launching", "factor": 1.6, "expires": "1h"}
    )
    assert raised.status_code == 201 and raised.json()["amount"] == "x1.6", raised.text
    # A fresh allowance of 1.6 x 5 = 8 an hour while the raise lasts.
    assert statuses(gateway, key, 9) == [200] * 8 + [429]
    assert error(
        admin.post("/admin/v1/rate-raises", json={"tenant": "launching", "factor": 1000,
                                                  "expires": "1h"}), 422
    )["param"] == "factor"  # fmt: skip
    entries = admin.get("/admin/v1/audit", params={"target": "launching"}).json()["data"]
    assert entries[0]["action"] == "rate.raise"


def test_the_cli_drives_a_running_gateway_with_url(
    gateway: Gateway, admin: httpx.Client, token: str
) -> None:
    remote = ("--url", gateway.admin_url, "--token", token)
    made = json.loads(
        gateway.cli("tenants", "create", "remote", "--plan", "pro", *remote, "--json")
    )
    assert made["name"] == "remote"
    listed = json.loads(gateway.cli("tenants", "list", *remote, "--json"))
    assert "remote" in [t["name"] for t in listed]
    key = json.loads(gateway.cli("keys", "create", "--tenant", "remote", *remote, "--json"))
    assert chat_ok(gateway, key["key"])
    keys = json.loads(gateway.cli("keys", "list", "--tenant", "remote", *remote, "--json"))
    assert [k["key_id"] for k in keys] == [key["key_id"]]
    gateway.cli("keys", "revoke", key["key_id"], *remote)
    assert not chat_ok(gateway, key["key"])  # this instance forgot it at once
    entries = admin.get("/admin/v1/audit", params={"target": "remote"}).json()["data"]
    assert [e["actor"] for e in entries] == ["token:ops"]  # made through the API
    with pytest.raises(RuntimeError, match="Incorrect admin token"):
        gateway.cli("tenants", "list", "--url", gateway.admin_url, "--token", "qga-bad")


def test_oauth_clients_are_managed_through_the_admin_api(
    gateway: Gateway, admin: httpx.Client
) -> None:
    admin.post("/admin/v1/tenants", json={"name": "machine", "plan": "pro"})
    made = admin.post("/admin/v1/oauth-clients", json={"tenant": "machine", "name": "batch"})
    assert made.status_code == 201, made.text
    client = made.json()
    form = {"grant_type": "client_credentials", "client_id": client["client_id"],
            "client_secret": client["client_secret"]}  # fmt: skip
    issued = httpx.post(gateway.base_url + "/oauth/token", data=form, timeout=10)
    assert issued.status_code == 200, issued.text
    assert chat_ok(gateway, issued.json()["access_token"])
    listed = admin.get("/admin/v1/oauth-clients", params={"tenant": "machine"}).json()["data"]
    assert [c["client_id"] for c in listed] == [client["client_id"]]
    assert client["client_secret"] not in json.dumps(listed)
    revoked = admin.post(f"/admin/v1/oauth-clients/{client['client_id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = httpx.post(gateway.base_url + "/oauth/token", data=form, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    entries = admin.get("/admin/v1/audit", params={"target": client["client_id"]}).json()
    assert [e["action"] for e in entries["data"]] == ["oauth_client.revoke", "oauth_client.create"]
    assert client["client_secret"] not in json.dumps(entries)


def until(check: Callable[[], bool], within: float = 5.0) -> bool:
    """Polls ``check`` (the gateway's key cache TTL here is 200 ms)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # poll interval, not a wait for the outcome
    return True


def test_the_cli_makes_the_same_changes_on_the_database(gateway: Gateway) -> None:
    gateway.cli("tenants", "create", "shell", "--plan", "hourly")
    key = json.loads(gateway.cli("keys", "create", "--tenant", "shell", "--json"))
    gateway.cli("tenants", "update", "shell", "--status", "suspended")
    assert until(lambda: not chat_ok(gateway, key["key"]))
    gateway.cli("tenants", "update", "shell", "--status", "active", "--plan", "pro")
    assert until(lambda: chat_ok(gateway, key["key"]))
    rotated = json.loads(gateway.cli("keys", "rotate", key["key_id"], "--overlap", "0s", "--json"))
    assert until(lambda: not chat_ok(gateway, key["key"])) and chat_ok(gateway, rotated["key"])
    gateway.cli("keys", "bypass", rotated["key_id"], "--on", "--reason", "drill")
    gateway.cli("keys", "expire", rotated["key_id"], "--at", "1s")
    assert until(lambda: not chat_ok(gateway, rotated["key"]))
    trail = json.loads(gateway.cli("audit", "--target", "shell", "--json"))
    assert [e["action"] for e in trail] == ["tenant.update", "tenant.update", "tenant.create"]
    trail = json.loads(gateway.cli("audit", "--target", rotated["key_id"], "--json"))
    assert [e["action"] for e in trail] == ["key.expire", "key.bypass_on", "key.create"]
    assert all(e["actor"].startswith("cli:") for e in trail)
