"""The built-in OAuth2 issuer: client-credentials grant (RFC 6749 §4.4).

A client authenticates with its id and secret and receives a short-lived JWT carrying
its tenant and plan, signed by the newest key in ``SigningKeys``. The gateway trusts its
own issuer like any configured one (``trusted_issuer``), through the same verifier.

Errors are RFC 6749 §5.2's, not OpenAI's: ``OAuthError`` carries the ``error`` code,
the status and, for a failed client authentication, a ``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

from quotagate.auth.jwks import JwksCache
from quotagate.auth.jwt_verify import ClaimPaths, TrustedIssuer
from quotagate.auth.keys import verify_key
from quotagate.auth.signing_keys import SigningKeys
from quotagate.config.schema import OAuthIssuerConfig
from quotagate.db.oauth_clients import ClientRow
from quotagate.db.repo import Database

CLAIMS = ClaimPaths(tenant="tenant", user="sub", plan="plan", scopes="scope")


class OAuthError(Exception):
    def __init__(
        self, error: str, description: str, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after


# What a client id can be (ours are ``qgc_`` + hex): anything else is refused before it
# is looked up, or counted (it would become part of a counter's key).
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def client_id_shaped(client_id: str) -> bool:
    return _CLIENT_ID.fullmatch(client_id) is not None


def invalid_client() -> OAuthError:
    return OAuthError("invalid_client", "Client authentication failed.", 401)


class OAuthIssuer:
    def __init__(
        self,
        config: OAuthIssuerConfig,
        issuer: str,
        keys: SigningKeys,
        db: Database,
        server_secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.issuer = issuer
        self.keys = keys
        self._db = db
        self._secret = server_secret
        self._clock = clock

    async def authenticate_client(self, client_id: str, client_secret: str) -> ClientRow:
        row = await self._db.find_client(client_id) if client_id_shaped(client_id) else None
        # The hash is computed either way: an unknown id answers no faster than a bad secret.
        stored = row.secret_hash if row is not None else "0" * 64
        good = verify_key(self._secret, client_secret[:256], stored)
        if row is None or not good or row.revoked_at is not None or row.tenant_status != "active":
            raise invalid_client()
        return row

    def issue(self, client_id: str, tenant: str, plan: str) -> dict[str, Any]:
        """The token response body for an authenticated client."""
        key = self.keys.current()
        now = int(self._clock())
        ttl = int(self.config.token_ttl)
        claims = {
            "iss": self.issuer, "aud": self.config.audience, "sub": client_id,
            "tenant": tenant, "plan": plan, "iat": now, "nbf": now, "exp": now + ttl,
            "jti": secrets.token_urlsafe(12),
        }  # fmt: skip
        token = jwt.encode(
            claims, key.private_key, algorithm=self.config.algorithm, headers={"kid": key.kid}
        )
        return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}

    def discovery(self) -> dict[str, Any]:
        """OpenID Provider metadata (RFC 8414 / OIDC Discovery), what a client needs."""
        return {
            "issuer": self.issuer,
            "token_endpoint": f"{self.issuer}/oauth/token",
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "id_token_signing_alg_values_supported": [self.config.algorithm],
            "subject_types_supported": ["public"],
        }

    def trusted_issuer(self, leeway: float) -> TrustedIssuer:
        """The gateway's own issuer among its trusted ones; its key set is read from the
        key directory (no cooldown: a local read, and a rotation must apply at once)."""

        async def read_keys() -> dict[str, Any]:
            return self.keys.jwks()

        return TrustedIssuer(
            issuer=self.issuer,
            audience=self.config.audience,
            algorithms=frozenset({self.config.algorithm}),
            claims=CLAIMS,
            leeway=leeway,
            required=("sub", "tenant", "plan"),
            jwks=JwksCache("built-in", read_keys, cooldown=0.0, max_age=60.0),
            builtin=True,
        )
