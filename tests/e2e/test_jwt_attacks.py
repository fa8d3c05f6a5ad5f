"""JWT validation, written as attacks on a real gateway process that trusts a real
local IdP (``idp.FakeIdp``, an HTTP server this module runs and whose requests it
counts). Each attack is refused with a 401 before the upstream is reached; the valid
tokens next to them show the refusals are for the attack, not for something else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from e2e_clients import TIMEOUT, MockUpstream, assert_error_response, messages, sdk
from idp import AUDIENCE, FakeIdp, PrivateKey, b64, b64json, claims, public_jwk, sign, unsigned

from harness import Gateway, policy

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()
ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
BODY = {"model": "gpt-3.5-turbo", "messages": messages("hello")}


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdp]:
    server = FakeIdp()
    main = server.realm("main")
    main.keys.update({"rsa-1": RSA, "ec-1": EC, "ed-1": ED})
    server.realm("flaky").keys["rsa-1"] = RSA
    server.realm("kc").keys["rsa-1"] = RSA
    server.realm("attacker").keys["evil"] = ATTACKER
    yield server
    server.stop()


def _issuer(idp: FakeIdp, realm: str, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": idp.issuer(realm),
        "audience": AUDIENCE,
        "jwks_url": f"{idp.issuer(realm)}/jwks",
        "claims": {"tenant": "org", "user": "sub", "plan": "plan"},
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: str, idp: FakeIdp
) -> Iterator[Gateway]:
    keycloak = {  # discovery, and the plan among the realm roles (Keycloak's shape)
        "issuer": idp.issuer("kc"),
        "audience": AUDIENCE,
        "discovery": True,
        "claims": {"tenant": "org", "user": "preferred_username", "plan": "realm_access.roles"},
    }
    auth = {
        "key_cache_ttl": "200ms",
        "jwt": [
            _issuer(idp, "main", jwks_cooldown="1h"),
            _issuer(idp, "flaky", jwks_cooldown="100ms"),
            keycloak,
        ],
    }
    gw = Gateway(tmp_path_factory.mktemp("jwt"), policy(upstream, auth=auth)).start()
    for realm in ("main", "flaky", "kc"):  # each key set is fetched once at start-up
        idp.wait_for_fetch(realm, since=0)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=TIMEOUT) as client:
        yield client


def call(http: httpx.Client, token: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def assert_refused(http: httpx.Client, mock: MockUpstream, token: str, why: str) -> None:
    seen = mock.requests_seen()
    error = assert_error_response(call(http, token), 401, "invalid_api_key")
    assert why in error["message"], error
    assert mock.requests_seen() == seen


def good(idp: FakeIdp, realm: str = "main", **overrides: Any) -> dict[str, Any]:
    return claims(idp.issuer(realm), **overrides)


# The baseline: every default algorithm, through the official SDK.


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [
        (RSA, "rsa-1", "RS256"),
        (RSA, "rsa-1", "PS256"),
        (EC, "ec-1", "ES256"),
        (ED, "ed-1", "EdDSA"),
    ],
)
def test_a_valid_token_of_each_default_algorithm_is_served(
    gateway: Gateway, idp: FakeIdp, key: PrivateKey, kid: str, alg: str
) -> None:
    token = sign(key, kid, alg, good(idp, sub=f"user-{alg}"))
    with sdk(gateway, token) as client:
        reply = client.chat.completions.create(model="gpt-4", messages=messages("hi"))
    assert reply.choices[0].message.content


# alg: none, and signatures that are not there.


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_every_spelling_is_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp, alg: str
) -> None:
    token = unsigned({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, good(idp))
    assert_refused(http, mock, token, "algorithm")


def test_rs256_with_an_empty_signature_is_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp
) -> None:
    token = unsigned({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}, good(idp))
    assert_refused(http, mock, token, "signature")


def test_a_tampered_payload_is_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp
) -> None:
    header, _, signature = sign(RSA, "rsa-1", "RS256", good(idp, plan="free")).split(".")
    forged = f"{header}.{b64json(good(idp, plan='enterprise'))}.{signature}"
    assert_refused(http, mock, forged, "signature")


# RS256 → HS256: the public key as an HMAC secret.


def _public_key_forms() -> dict[str, bytes]:
    public = RSA.public_key()
    return {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pem-pkcs1": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        "jwk": json.dumps(public_jwk(RSA, "rsa-1")).encode(),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }


@pytest.mark.parametrize("form", ["pem", "pem-pkcs1", "jwk", "der"])
def test_hs256_signed_with_the_public_key_is_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp, form: str
) -> None:
    header = b64json({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    payload = b64json(good(idp))
    secret = _public_key_forms()[form]
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert_refused(http, mock, f"{header}.{payload}.{b64(mac)}", "algorithm")


# kid: whatever it holds is a dictionary key, never a path, a query or a fetch.


@pytest.mark.parametrize(
    ("kid", "why"),
    [
        ("../../../../etc/passwd", "signing key"),
        ("/dev/null", "signing key"),
        ("rsa-1' OR '1'='1' --", "signing key"),
        ('"; DROP TABLE qg_tenants; --', "signing key"),
        ("k" * 10240, "larger than"),
    ],
    ids=["traversal", "dev-null", "sql-or", "sql-drop", "10kb"],
)
def test_hostile_kids_are_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp, kid: str, why: str
) -> None:
    assert_refused(http, mock, sign(RSA, kid, "RS256", good(idp)), why)


# Headers that point elsewhere for the key are never followed.


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_jku_and_x5u_are_never_fetched(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp, header: str
) -> None:
    url = f"{idp.issuer('attacker')}/jwks"
    token = sign(ATTACKER, "evil", "RS256", good(idp), **{header: url})
    assert_refused(http, mock, token, header)
    assert idp.count("/attacker/jwks") == 0


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("jwk", public_jwk(ATTACKER, "rsa-1")),
        ("x5c", ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
        ("crit", ["b64"]),
    ],
)
def test_embedded_keys_and_critical_extensions_are_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp, header: str, value: Any
) -> None:
    token = sign(ATTACKER, "rsa-1", "RS256", good(idp), **{header: value})
    assert_refused(http, mock, token, header)


def test_a_key_the_issuer_never_published_is_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp
) -> None:
    assert_refused(http, mock, sign(ATTACKER, "rsa-1", "RS256", good(idp)), "signature")


# Registered claims.


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"exp": -120}, "expired"),
        ({"nbf": +600}, "not valid yet"),
        ({"iat": +600}, "not valid yet"),
        ({"exp": None}, "'exp'"),
        ({"aud": "another-service"}, "aud"),
        ({"aud": None}, "'aud'"),
    ],
    ids=["expired", "nbf-future", "iat-future", "no-exp", "wrong-aud", "no-aud"],
)
def test_bad_registered_claims_are_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp, overrides: dict[str, Any], why: str
) -> None:
    payload = good(idp)
    for name, value in overrides.items():
        if value is None:
            payload.pop(name)
        elif isinstance(value, int):
            payload[name] = payload["iat"] + value  # relative to now; past the 30 s leeway
        else:
            payload[name] = value
    assert_refused(http, mock, sign(RSA, "rsa-1", "RS256", payload), why)


def test_an_untrusted_issuer_is_refused(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp
) -> None:
    token = sign(RSA, "rsa-1", "RS256", claims("https://evil.example.com/realms/ai"))
    assert_refused(http, mock, token, "issuer")
    # One trusted issuer's key does not sign for another trusted issuer's realm either.
    token = sign(ATTACKER, "evil", "RS256", claims(idp.issuer("attacker")))
    assert_refused(http, mock, token, "issuer")


# Size: refused before any cryptography.


def test_a_64kb_token_is_refused_before_any_cryptography(
    gateway: Gateway, http: httpx.Client, mock: MockUpstream, idp: FakeIdp
) -> None:
    # Validly signed by a trusted key: only the size check can refuse it, and the reason
    # (in the answer and in the gateway's log) says that is what did.
    padded = good(idp, pad="x" * 65536)
    token = sign(RSA, "rsa-1", "RS256", padded)
    assert len(token) > 65536
    assert_refused(http, mock, token, "larger than 8192 bytes (refused unread)")
    assert "larger than 8192 bytes (refused unread)" in gateway.log_text()


# The key set: cooldown, failures, rotation.


@pytest.mark.parametrize(("realm", "cooldown"), [("main", 3600.0), ("flaky", 0.1)])
def test_a_thousand_random_kids_cost_at_most_one_fetch_per_cooldown(
    http: httpx.Client, idp: FakeIdp, realm: str, cooldown: float
) -> None:
    before = idp.jwks_fetches(realm)
    started = time.monotonic()
    for _ in range(1000):
        token = sign(RSA, secrets.token_hex(8), "RS256", good(idp, realm))
        assert call(http, token).status_code == 401
    elapsed = time.monotonic() - started
    assert idp.jwks_fetches(realm) - before <= 1 + elapsed / cooldown


@pytest.mark.parametrize("failure", ["500", "html", "empty"])
def test_last_good_keys_still_validate_while_the_idp_fails(
    http: httpx.Client, idp: FakeIdp, failure: str
) -> None:
    realm = idp.realms["flaky"]
    token = sign(RSA, "rsa-1", "RS256", good(idp, "flaky", sub=f"flaky-{failure}"))
    assert call(http, token).status_code == 200
    realm.mode = failure
    try:
        before = idp.jwks_fetches("flaky")
        # An unknown kid makes the gateway refetch (once its 100ms cooldown is over).
        unknown = sign(RSA, secrets.token_hex(4), "RS256", good(idp, "flaky"))
        while idp.jwks_fetches("flaky") == before:
            assert call(http, unknown).status_code == 401
        # A token never seen before (a seen one may be served from the verified cache).
        fresh = sign(RSA, "rsa-1", "RS256", good(idp, "flaky", sub=f"after-{failure}"))
        assert call(http, fresh).status_code == 200
    finally:
        realm.mode = "ok"


def test_a_new_key_at_the_idp_is_picked_up_on_its_first_unknown_kid(
    http: httpx.Client, idp: FakeIdp
) -> None:
    fresh = ec.generate_private_key(ec.SECP256R1())
    idp.realms["flaky"].keys["ec-new"] = fresh
    token = sign(fresh, "ec-new", "ES256", good(idp, "flaky", sub="rotated"))
    before = idp.jwks_fetches("flaky")
    while call(http, token).status_code != 200:  # 401 until the cooldown lets it refetch
        pass
    assert idp.jwks_fetches("flaky") > before


# Claims → principal: plans, limits and tenants as for an API key.


def test_keycloak_roles_and_discovery_pick_the_plan(
    http: httpx.Client, mock: MockUpstream, idp: FakeIdp
) -> None:
    base = claims(idp.issuer("kc"), plan=None, preferred_username="alice")
    allowed = {**base, "realm_access": {"roles": ["offline_access", "pro"]}}
    assert (
        call(http, sign(RSA, "rsa-1", "RS256", allowed), {**BODY, "model": "gpt-4"}).status_code
        == 200
    )
    free = {**base, "realm_access": {"roles": ["free"]}}
    response = call(http, sign(RSA, "rsa-1", "RS256", free), {**BODY, "model": "gpt-4"})
    assert_error_response(response, 403, "model_not_allowed")
    none = {**base, "realm_access": {"roles": ["offline_access"]}}
    response = call(http, sign(RSA, "rsa-1", "RS256", none))
    assert_error_response(response, 403, "plan_not_found")
    assert idp.count("/kc/.well-known/openid-configuration") >= 1


def test_a_plan_the_policy_does_not_define_is_refused(http: httpx.Client, idp: FakeIdp) -> None:
    response = call(http, sign(RSA, "rsa-1", "RS256", good(idp, plan="platinum")))
    error = assert_error_response(response, 403, "plan_not_found")
    assert "platinum" in error["message"]


def test_a_jwt_principal_is_rate_limited_by_its_plan(http: httpx.Client, idp: FakeIdp) -> None:
    token = sign(EC, "ec-1", "ES256", good(idp, plan="free", sub="limited-user"))
    statuses = [call(http, token).status_code for _ in range(11)]
    assert statuses[:10] == [200] * 10
    assert statuses[10] == 429


def test_a_database_tenant_gives_its_plan_to_a_token_without_one(
    gateway: Gateway, http: httpx.Client, idp: FakeIdp
) -> None:
    gateway.cli("tenants", "create", "acme-db", "--plan", "free")
    token = sign(RSA, "rsa-1", "RS256", good(idp, org="acme-db", plan=None))
    assert call(http, token).status_code == 200
    response = call(http, token, {**BODY, "model": "gpt-4"})
    assert_error_response(response, 403, "model_not_allowed")
