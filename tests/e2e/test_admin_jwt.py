"""An operator's JWT opens the admin API when it carries the admin scope; a tenant's
JWT from the same issuer does not, whatever else it claims."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from idp import AUDIENCE, FakeIdp, claims, sign

from harness import Gateway, policy

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdp]:
    server = FakeIdp()
    server.realm("ops").keys["k1"] = KEY
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: str, idp: FakeIdp
) -> Iterator[Gateway]:
    issuer = {
        "issuer": idp.issuer("ops"), "audience": AUDIENCE, "jwks_url": f"{idp.issuer('ops')}/jwks",
        "claims": {"tenant": "org", "user": "sub", "plan": "plan", "scopes": "scope"},
    }  # fmt: skip
    doc = policy(upstream, auth={"jwt": [issuer]})
    gw = Gateway(tmp_path_factory.mktemp("admin-jwt"), doc).start()
    idp.wait_for_fetch("ops", since=0)
    yield gw
    gw.stop()


def tenants(gw: Gateway, token: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    return httpx.get(gw.admin_url + "/admin/v1/tenants", headers=headers, timeout=10)


def test_the_admin_scope_opens_the_admin_api(gateway: Gateway, idp: FakeIdp) -> None:
    issuer = idp.issuer("ops")
    operator = sign(KEY, "k1", "RS256", claims(issuer, sub="alice", scope="openid quotagate:admin"))
    assert tenants(gateway, operator).status_code == 200
    made = httpx.post(
        gateway.admin_url + "/admin/v1/tenants",
        headers={"authorization": f"Bearer {operator}"},
        json={"name": "by-jwt", "plan": "pro"},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    audit = httpx.get(
        gateway.admin_url + "/admin/v1/audit",
        headers={"authorization": f"Bearer {operator}"},
        params={"target": "by-jwt"},
        timeout=10,
    ).json()["data"]
    assert audit[0]["actor"] == f"jwt:alice@{issuer}"


def test_without_the_scope_or_a_valid_signature_it_stays_shut(
    gateway: Gateway, idp: FakeIdp
) -> None:
    issuer = idp.issuer("ops")
    tenant_user = sign(KEY, "k1", "RS256", claims(issuer, sub="bob", scope="openid chat"))
    refused = tenants(gateway, tenant_user)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    forged = sign(OTHER, "k1", "RS256", claims(issuer, sub="eve", scope="quotagate:admin"))
    assert tenants(gateway, forged).status_code == 401
    expired = sign(KEY, "k1", "RS256", claims(issuer, sub="alice", scope="quotagate:admin", exp=1))
    assert tenants(gateway, expired).status_code == 401
