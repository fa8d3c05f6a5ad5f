"""The built-in OAuth2 issuer on a real gateway: client-credentials tokens (both client
authentication methods, RFC 6749's errors), the tokens as bearer credentials of the
same gateway, key rotation, and what is never stored or logged."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import openai
import pytest
from e2e_clients import TIMEOUT, assert_sdk_error, messages, poll_until_raises, sdk

from harness import Gateway, policy

FORM = {"grant_type": "client_credentials"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    auth = {"key_cache_ttl": "200ms", "oauth_issuer": {"enabled": True, "token_ttl": "15m"}}
    gw = Gateway(tmp_path_factory.mktemp("oauth"), policy(upstream, auth=auth)).start()
    gw.cli("tenants", "create", "acme", "--plan", "free")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=TIMEOUT) as client:
        yield client


ISSUED: list[str] = []  # every secret and token this module saw: none may be stored or logged


def new_client(gateway: Gateway, plan: str | None = None) -> tuple[str, str]:
    args = ["clients", "create", "--tenant", "acme", "--json"]
    created = json.loads(gateway.cli(*args, *(["--plan", plan] if plan else [])))
    ISSUED.append(created["client_secret"])
    return created["client_id"], created["client_secret"]


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> tuple[str, str]:
    return new_client(gateway)


def token_request(http: httpx.Client, data: dict[str, str], **kwargs: Any) -> httpx.Response:
    response = http.post("/oauth/token", data=data, **kwargs)
    assert response.headers["cache-control"] == "no-store"
    if response.status_code == 200:
        ISSUED.append(response.json()["access_token"])
    return response


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["error_description"], body
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


def test_client_secret_basic_gets_a_token(http: httpx.Client, client: tuple[str, str]) -> None:
    response = token_request(http, FORM, auth=client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == client[0] and claims["tenant"] == "acme" and claims["plan"] == "free"
    assert claims["exp"] - claims["iat"] == 900


def test_client_secret_post_gets_a_token(http: httpx.Client, client: tuple[str, str]) -> None:
    data = {**FORM, "client_id": client[0], "client_secret": client[1]}
    assert token_request(http, data).status_code == 200


@pytest.mark.parametrize("method", ["basic", "post"])
def test_a_wrong_secret_is_invalid_client(
    http: httpx.Client, client: tuple[str, str], method: str
) -> None:
    wrong = client[1][:-4] + "AAAA"
    if method == "basic":
        response = token_request(http, FORM, auth=(client[0], wrong))
    else:
        response = token_request(http, {**FORM, "client_id": client[0], "client_secret": wrong})
    assert_oauth_error(response, 401, "invalid_client")


def test_an_unknown_or_missing_client_is_invalid_client(http: httpx.Client) -> None:
    assert_oauth_error(token_request(http, FORM, auth=("qgc_0000", "x")), 401, "invalid_client")
    assert_oauth_error(token_request(http, FORM), 401, "invalid_client")


def test_malformed_requests_get_rfc_errors(http: httpx.Client, client: tuple[str, str]) -> None:
    response = token_request(http, {"grant_type": "password"}, auth=client)
    assert_oauth_error(response, 400, "unsupported_grant_type")
    assert_oauth_error(token_request(http, {}, auth=client), 400, "invalid_request")
    both = {**FORM, "client_id": client[0], "client_secret": client[1]}
    assert_oauth_error(token_request(http, both, auth=client), 400, "invalid_request")
    as_json = http.post("/oauth/token", json=FORM, auth=client)
    assert_oauth_error(as_json, 400, "invalid_request")
    garbled = {"Authorization": "Basic !!!not-base64"}
    assert_oauth_error(token_request(http, FORM, headers=garbled), 401, "invalid_client")


def test_the_token_is_a_bearer_credential_on_its_plan(
    gateway: Gateway, http: httpx.Client, client: tuple[str, str]
) -> None:
    token = token_request(http, FORM, auth=client).json()["access_token"]
    with sdk(gateway, token) as sdk_client:
        reply = sdk_client.chat.completions.create(model="gpt-3.5-turbo", messages=messages("hi"))
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError) as err:
            sdk_client.chat.completions.create(model="gpt-4", messages=messages("hi"))
    assert_sdk_error(err.value, 403, "model_not_allowed")


def test_a_client_plan_overrides_the_tenants(gateway: Gateway, http: httpx.Client) -> None:
    token = token_request(http, FORM, auth=new_client(gateway, "pro")).json()["access_token"]
    with sdk(gateway, token) as sdk_client:
        assert sdk_client.chat.completions.create(model="gpt-4", messages=messages("hi"))


def test_a_revoked_client_gets_no_token_and_its_tokens_stop_working(
    gateway: Gateway, http: httpx.Client
) -> None:
    revoked = new_client(gateway)
    token = token_request(http, FORM, auth=revoked).json()["access_token"]
    with sdk(gateway, token) as sdk_client:
        assert sdk_client.chat.completions.create(model="gpt-3.5-turbo", messages=messages("x"))
        gateway.cli("clients", "revoke", revoked[0])
        assert_oauth_error(token_request(http, FORM, auth=revoked), 401, "invalid_client")
        # The policy caches verified tokens for 200ms: refusal follows well within 3s.
        refused = poll_until_raises(
            lambda: sdk_client.chat.completions.create(
                model="gpt-3.5-turbo", messages=messages("x")
            ),
            openai.AuthenticationError,
            within=3.0,
        )
    assert isinstance(refused, openai.AuthenticationError)
    assert "revoked" in assert_sdk_error(refused, 401, "invalid_api_key")["message"]
    listed = json.loads(gateway.cli("clients", "list", "--tenant", "acme", "--json"))
    assert [c["revoked_at"] is not None for c in listed if c["client_id"] == revoked[0]] == [True]


def test_discovery_and_jwks_describe_the_issuer(
    gateway: Gateway, http: httpx.Client, client: tuple[str, str]
) -> None:
    discovery = http.get("/.well-known/openid-configuration").json()
    assert discovery["issuer"] == gateway.base_url
    assert discovery["token_endpoint"] == f"{gateway.base_url}/oauth/token"
    token = token_request(http, FORM, auth=client).json()["access_token"]
    keys = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, keys, algorithms=["ES256"], audience="quotagate")
    assert claims["iss"] == gateway.base_url


def test_after_a_rotation_old_tokens_stay_valid_and_new_ones_use_the_new_key(
    gateway: Gateway, http: httpx.Client, client: tuple[str, str]
) -> None:
    old = token_request(http, FORM, auth=client).json()["access_token"]
    gateway.cli("oauth", "rotate-key")
    new = token_request(http, FORM, auth=client).json()["access_token"]
    old_kid, new_kid = (jwt.get_unverified_header(t)["kid"] for t in (old, new))
    assert old_kid != new_kid
    published = {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]}
    assert {old_kid, new_kid} <= published
    for token in (old, new):
        with sdk(gateway, token) as sdk_client:
            assert sdk_client.chat.completions.create(model="gpt-3.5-turbo", messages=messages("x"))


def test_a_forged_token_from_the_issuers_own_format_is_refused(
    gateway: Gateway, http: httpx.Client, client: tuple[str, str]
) -> None:
    token = token_request(http, FORM, auth=client).json()["access_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["plan"] = "enterprise"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    with sdk(gateway, forged) as sdk_client, pytest.raises(openai.AuthenticationError) as err:
        sdk_client.chat.completions.create(model="gpt-4", messages=messages("x"))
    assert_sdk_error(err.value, 401, "invalid_api_key")


def test_another_gateway_trusts_this_issuer_through_discovery(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: str,
    gateway: Gateway,
    http: httpx.Client,
    client: tuple[str, str],
) -> None:
    """The issuer's discovery document and key set are what a standard OIDC consumer needs:
    a second gateway, configured with discovery only, accepts its tokens."""
    trusting = {
        "issuer": gateway.base_url,
        "audience": "quotagate",
        "discovery": True,
        "algorithms": ["ES256"],
        "claims": {"tenant": "tenant", "plan": "plan"},
    }
    other = Gateway(
        tmp_path_factory.mktemp("relying"), policy(upstream, auth={"jwt": [trusting]})
    ).start()
    try:
        token = token_request(http, FORM, auth=client).json()["access_token"]
        with sdk(other, token) as sdk_client:
            assert sdk_client.chat.completions.create(model="gpt-3.5-turbo", messages=messages("x"))
    finally:
        other.stop()


# Last in the module: what the tests above issued must be nowhere at rest.


def test_no_secret_or_token_is_stored_or_logged(gateway: Gateway) -> None:
    assert len(ISSUED) > 10
    database = b"".join(path.read_bytes() for path in gateway.tmp.glob("qg.db*"))  # and -wal
    log = gateway.log_text()
    for secret in ISSUED:
        assert secret.encode() not in database
        assert secret not in log
        assert secret.split(".")[-1] not in log  # not even a token's signature
    assert b"qg_oauth_clients" in database  # the right file: the clients are in it
