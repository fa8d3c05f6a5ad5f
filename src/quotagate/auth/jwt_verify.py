"""Verify a bearer JWT from a trusted issuer: size, shape, issuer, headers, algorithm,
key, signature, then the registered claims, in that order (cheapest and most
attacker-controlled first).

What is refused, and where:

- a token above ``auth.max_token_bytes``: before it is parsed or any key is touched;
- ``alg`` not in the issuer's list (``none`` in any spelling, HS256 without a configured
  secret): before a key is looked up;
- a key of another family than ``alg`` (the RS256→HS256 confusion: an RSA public key
  never becomes an HMAC secret; HMAC keys never come from a key set at all);
- ``jku``, ``x5u``, ``x5c``, ``jwk`` and ``crit`` headers: the token is refused, nothing
  they name is fetched or used;
- ``exp`` missing or past, ``nbf`` / ``iat`` in the future (with the issuer's leeway),
  ``aud`` / ``iss`` not the configured ones, a bad signature.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson

from quotagate.auth.jwks import JwksCache, JwksUnavailable
from quotagate.errors import AuthenticationFailed, ServiceUnavailable

_FORBIDDEN_HEADERS = ("jku", "x5u", "x5c", "jwk", "crit")
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
MAX_KID_LEN = 256


@dataclass(slots=True, frozen=True)
class ClaimPaths:
    tenant: str
    user: str
    plan: str | None
    scopes: str | None


@dataclass(slots=True, frozen=True)
class TrustedIssuer:
    issuer: str
    audience: str | list[str] | None
    algorithms: frozenset[str]
    claims: ClaimPaths
    leeway: float
    required: tuple[str, ...] = ()
    default_plan: str | None = None
    jwks: JwksCache | None = None
    hs256_secret: bytes | None = field(default=None, repr=False)
    builtin: bool = False  # our own OAuth issuer: its subjects are client ids


class InvalidToken(AuthenticationFailed):
    """A bearer token that is not a valid JWT of a trusted issuer (401)."""


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return orjson.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        raise InvalidToken("The bearer token is not a well-formed JWT.") from None


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = token.encode("latin-1", "replace")
    if raw.count(b".") != 2 or not _TOKEN_CHARS.issuperset(raw):
        raise InvalidToken("The bearer token is not a well-formed JWT.")
    header_part, payload_part, _ = token.split(".")
    header, payload = _b64json(header_part), _b64json(payload_part)
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidToken("The bearer token is not a well-formed JWT.")
    return header, payload


def _check_header(header: dict[str, Any], issuer: TrustedIssuer) -> tuple[str, str | None]:
    for name in _FORBIDDEN_HEADERS:
        if name in header:
            raise InvalidToken(f"Tokens with a '{name}' header are not accepted.")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in issuer.algorithms:
        raise InvalidToken(f"The token's algorithm {str(alg)[:20]!r} is not accepted.")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LEN):
        raise InvalidToken("The token's key id is not valid.")
    return alg, kid


class JwtVerifier:
    def __init__(self, issuers: list[TrustedIssuer], max_token_bytes: int) -> None:
        self.issuers = {issuer.issuer: issuer for issuer in issuers}
        self.max_token_bytes = max_token_bytes

    async def verify(self, token: str) -> tuple[TrustedIssuer, dict[str, Any]]:
        """The issuer and the verified claims of ``token``; raises ``InvalidToken``."""
        if len(token) > self.max_token_bytes:
            raise InvalidToken(
                f"The bearer token is larger than {self.max_token_bytes} bytes (refused unread)."
            )
        header, unverified = _unverified_parts(token)
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken("The token's issuer is not trusted by this gateway.")
        alg, kid = _check_header(header, issuer)
        key = await self._key(issuer, alg, kid)
        return issuer, _decode(token, key, alg, issuer)

    @staticmethod
    async def _key(issuer: TrustedIssuer, alg: str, kid: str | None) -> jwt.PyJWK | bytes:
        if alg == "HS256":
            assert issuer.hs256_secret is not None, "config: HS256 needs a secret"
            return issuer.hs256_secret
        assert issuer.jwks is not None, "config: asymmetric algorithms need a key set"
        try:
            key = await issuer.jwks.key(kid, alg)
        except JwksUnavailable:
            raise ServiceUnavailable(
                "The token issuer's keys cannot be fetched right now."
            ) from None
        if key is None:
            raise InvalidToken("The token's signing key is not one of the issuer's keys.")
        return key


_MESSAGES: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "The token has expired.",
    jwt.ImmatureSignatureError: "The token is not valid yet.",
    jwt.InvalidAudienceError: "The token is not meant for this gateway (aud).",
    jwt.InvalidIssuerError: "The token's issuer is not trusted by this gateway.",
    jwt.InvalidSignatureError: "The token's signature is not valid.",
    jwt.InvalidAlgorithmError: "The token's algorithm is not accepted.",
}


def _decode(token: str, key: jwt.PyJWK | bytes, alg: str, issuer: TrustedIssuer) -> dict[str, Any]:
    required = ["exp", "iss", *(["aud"] if issuer.audience else []), *issuer.required]
    try:
        return jwt.decode(
            token, key, algorithms=[alg], audience=issuer.audience, issuer=issuer.issuer,
            leeway=issuer.leeway,
            options={"require": required, "verify_aud": issuer.audience is not None},
        )  # fmt: skip
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"The token has no '{exc.claim}' claim.") from None
    except jwt.PyJWTError as exc:  # InvalidKeyError is not an InvalidTokenError
        message = _MESSAGES.get(type(exc), "The token is not valid.")
        raise InvalidToken(message) from None
