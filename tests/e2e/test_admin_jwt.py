"""Scopes on top of plans: an operator's JWT opens the admin API when it carries the
admin scope, and a scoped model serves only callers whose JWT carries its scope."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e_clients import messages, sdk
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
    doc["models"]["gpt-4"]["scope"] = "models:gpt-4"
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


def test_a_scoped_model_needs_its_scope_besides_the_plan(gateway: Gateway, idp: FakeIdp) -> None:
    issuer = idp.issuer("ops")
    scoped = sign(KEY, "k1", "RS256", claims(issuer, plan="pro", scope="models:gpt-4"))
    plain = sign(KEY, "k1", "RS256", claims(issuer, plan="pro", scope="openid"))
    ask = messages("hi")
    assert sdk(gateway, scoped).chat.completions.create(model="gpt-4", messages=ask).choices
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(gateway, plain).chat.completions.create(model="gpt-4", messages=ask)
    assert refused.value.code == "insufficient_scope"
    # The same plan without the scope still has its unscoped models.
    assert sdk(gateway, plain).chat.completions.create(model="gpt-3.5-turbo", messages=ask).choices
    # An API key carries no scopes: its plan includes gpt-4, the scope keeps it out.
    key = gateway.tenant_key("keyed", "pro")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gateway, key).chat.completions.create(model="gpt-4", messages=ask)
