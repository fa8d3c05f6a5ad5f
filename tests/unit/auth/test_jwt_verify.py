"""The verifier alone (no network): HS256 only with a configured secret, and claims of
unexpected types refused as invalid tokens, never as a crash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from quotagate.auth.jwt_verify import ClaimPaths, InvalidToken, JwtVerifier, TrustedIssuer

SECRET = b"a-shared-secret-of-at-least-32-bytes!!"
ISS = "https://idp.example.com"
PATHS = ClaimPaths(tenant="org", user="sub", plan="plan", scopes="scope")


def verifier(**overrides: Any) -> JwtVerifier:
    fields: dict[str, Any] = {
        "issuer": ISS, "audience": "quotagate", "algorithms": frozenset({"HS256"}),
        "claims": PATHS, "leeway": 30.0, "hs256_secret": SECRET,
    }  # fmt: skip
    fields.update(overrides)
    return JwtVerifier([TrustedIssuer(**fields)], max_token_bytes=8192)


def token(secret: bytes = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": "quotagate", "sub": "u", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def test_hs256_with_the_configured_secret_is_accepted() -> None:
    issuer, claims = await verifier().verify(token())
    assert issuer.issuer == ISS and claims["sub"] == "u"


async def test_hs256_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        await verifier().verify(token(b"another-secret-another-secret-another"))


async def test_hs256_is_refused_by_an_issuer_that_does_not_list_it() -> None:
    with pytest.raises(InvalidToken, match="algorithm"):
        await verifier(algorithms=frozenset({"RS256"})).verify(token())


@pytest.mark.parametrize("iss", [["a", "b"], {"x": 1}, 7, None])
async def test_an_iss_of_another_type_is_an_untrusted_issuer(iss: Any) -> None:
    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256'})}.{part({'iss': iss, 'sub': 'u'})}"
    mac = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(InvalidToken, match="issuer"):
        await verifier().verify(forged)


@pytest.mark.parametrize(
    "bad",
    ["", "a.b", "a.b.c.d", "not base64!.e30.", "e30.e30", "W10.e30.", "eyJhbGciOiJIUzI1NiJ9.W10."],
)
async def test_malformed_tokens_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidToken):
        await verifier().verify(bad)
