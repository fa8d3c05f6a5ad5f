"""A small async JWKS cache: fetched off the request path's blocking calls, kept when
the IdP fails, refetched on an unknown ``kid`` at most once per cooldown.

PyJWT's ``PyJWKClient`` refetches on every unknown kid (a flood of made-up kids is a
flood at the IdP) and drops its keys when a fetch fails; this cache keeps the last good
key set until a new one parses, and never asks more than once per cooldown however many
requests are waiting (they all await the one fetch in flight).

Symmetric keys (``kty: oct``) in a key set are refused: a public key set must not hold
a shared secret, and accepting one would let anyone who can read it mint tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

log = logging.getLogger(__name__)

JwksSource = Callable[[], Awaitable[dict[str, Any]]]
_MAX_KEYS = 64  # a key set larger than this is not an IdP's

# Which key types and curves may verify each algorithm: a key is used only for an
# algorithm of its own family, whatever the token's header asks for.
_FAMILY = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "EdDSA": ("OKP", "Ed25519"),
}  # fmt: skip


class JwksUnavailable(Exception):
    """No key set has ever been loaded for this issuer (the IdP has not answered)."""


def fits(jwk: dict[str, Any], alg: str) -> bool:
    family = _FAMILY.get(alg)
    if family is None or jwk.get("kty") != family[0]:
        return False
    if family[1] is not None and jwk.get("crv") != family[1]:
        return False
    return jwk.get("alg") in (None, alg) and jwk.get("use") in (None, "sig")


def _weak(jwk: dict[str, Any]) -> bool:
    """An RSA key under 2048 bits (RFC 7518 §3.3): refused, not warned about per token."""
    modulus = jwk.get("n")
    return jwk.get("kty") == "RSA" and (not isinstance(modulus, str) or len(modulus) < 342)


def parse_key_set(document: object) -> dict[str, dict[str, Any]]:
    """The usable public keys of a JWKS document by kid; raises ValueError when there
    is none (an empty or broken set never replaces a good one)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, dict[str, Any]] = {}
    for jwk in document["keys"][:_MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or "d" in jwk:
            log.warning("JWKS: refused a symmetric or private key")
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not any(fits(jwk, alg) for alg in _FAMILY) or _weak(jwk):
            continue
        try:
            jwt.PyJWK(jwk)  # parses: a key that cannot be loaded is dropped here, not per token
        except jwt.PyJWTError:
            log.warning("JWKS: dropped key %r that does not parse", kid[:64])
            continue
        keys[kid] = jwk
    if not keys:
        raise ValueError("the key set has no usable public key")
    return keys


class JwksCache:
    def __init__(
        self,
        name: str,
        source: JwksSource,
        cooldown: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._source = source
        self._cooldown = cooldown
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._tried_at = -cooldown
        self._inflight: asyncio.Task[None] | None = None

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key for ``kid`` bound to ``alg``, or None when the set has no such key."""
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self._max_age:
            await self.refresh(wait=self._loaded_at is None)  # stale: refetch behind
        jwk = self._find(kid, alg)
        if jwk is None and kid is not None and kid not in self._keys:
            await self.refresh(wait=True)  # a new signing key, perhaps: once per cooldown
            jwk = self._find(kid, alg)
        if self._loaded_at is None:
            raise JwksUnavailable(self.name)
        return None if jwk is None else self._bound(jwk, alg)

    def _find(self, kid: str | None, alg: str) -> dict[str, Any] | None:
        jwk = self._keys.get(kid) if kid is not None else self._only_key(alg)
        return jwk if jwk is not None and fits(jwk, alg) else None

    def _only_key(self, alg: str) -> dict[str, Any] | None:
        """A token without a kid: the key set's one key of the right family, if unique."""
        matching = [jwk for jwk in self._keys.values() if fits(jwk, alg)]
        return matching[0] if len(matching) == 1 else None

    def _bound(self, jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
        cache_key = (str(jwk["kid"]), alg)
        parsed = self._parsed.get(cache_key)
        if parsed is None:
            parsed = self._parsed[cache_key] = jwt.PyJWK(jwk, algorithm=alg)
        return parsed

    async def refresh(self, wait: bool = True) -> None:
        """Fetch the key set once (every caller meanwhile shares the one fetch)."""
        if self._inflight is None:
            if self._clock() - self._tried_at < self._cooldown:
                return
            self._tried_at = self._clock()
            self._inflight = asyncio.create_task(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        if wait:
            await asyncio.shield(self._inflight)

    def _fetched(self, _: asyncio.Task[None]) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        try:
            keys = parse_key_set(await self._source())
        except Exception as exc:  # the IdP's failures vary; all mean "keep what we have"
            log.warning("JWKS %s: fetch failed, keeping %d keys: %s", self.name,
                        len(self._keys), exc)  # fmt: skip
            return
        if keys != self._keys:
            self._parsed = {}
        self._keys = keys
        self._loaded_at = self._clock()
