"""Who may present a JWT: the configured issuers and the built-in OAuth issuer, built
once from the policy (changes to ``auth.jwt`` and ``auth.oauth_issuer`` need a restart).
"""

from __future__ import annotations

import os

import aiohttp

from quotagate.auth.jwks import JwksCache
from quotagate.auth.jwks_http import HttpKeySource
from quotagate.auth.jwt_auth import JwtAuthenticator
from quotagate.auth.jwt_verify import ClaimPaths, JwtVerifier, TrustedIssuer
from quotagate.auth.oauth_issuer import OAuthIssuer
from quotagate.auth.signing_keys import SigningKeys
from quotagate.config.schema import JwtIssuer, Policy
from quotagate.db.repo import Database
from quotagate.errors import ConfigError
from quotagate.settings import Settings


def _trusted(config: JwtIssuer, sources: list[HttpKeySource]) -> TrustedIssuer:
    jwks = None
    if any(alg != "HS256" for alg in config.algorithms):
        source = HttpKeySource(config.issuer, config.jwks_url)
        sources.append(source)
        jwks = JwksCache(config.issuer, source, config.jwks_cooldown, config.jwks_max_age)
    secret = None
    if config.hs256_secret_env is not None:
        secret = os.environ.get(config.hs256_secret_env, "").encode()
        if len(secret) < 32:  # RFC 7518 §3.2: a key at least as long as the hash
            raise ConfigError(f"{config.hs256_secret_env}: an HS256 secret needs 32+ bytes")
    claims = config.claims
    return TrustedIssuer(
        issuer=config.issuer, audience=config.audience, algorithms=frozenset(config.algorithms),
        claims=ClaimPaths(claims.tenant, claims.user, claims.plan, claims.scopes),
        leeway=config.leeway, required=tuple(config.required_claims),
        default_plan=config.default_plan, jwks=jwks, hs256_secret=secret,
    )  # fmt: skip


class Identity:
    def __init__(self, policy: Policy, settings: Settings, db: Database) -> None:
        auth = policy.auth
        self.sources: list[HttpKeySource] = []
        issuers = [_trusted(config, self.sources) for config in auth.jwt]
        self.oauth: OAuthIssuer | None = None
        if auth.oauth_issuer.enabled:
            config = auth.oauth_issuer
            keys = SigningKeys(settings.data_dir / "oauth-keys", config.algorithm, config.token_ttl)
            own = config.issuer or f"http://{policy.server.listen}"
            self.oauth = OAuthIssuer(config, own, keys, db, settings.server_secret())
            issuers.append(self.oauth.trusted_issuer(leeway=30.0))
        self.jwt: JwtAuthenticator | None = None
        if issuers:
            verifier = JwtVerifier(issuers, auth.max_token_bytes)
            self.jwt = JwtAuthenticator(verifier, db, auth.key_cache_ttl)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.oauth is not None:
            self.oauth.keys.ensure()
        if self.sources:
            self._session = aiohttp.ClientSession()
            for source in self.sources:
                source.session = self._session
        if self.jwt is not None:  # fetch every key set now, without holding up start-up
            for issuer in self.jwt.verifier.issuers.values():
                if issuer.jwks is not None:
                    await issuer.jwks.refresh(wait=False)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
