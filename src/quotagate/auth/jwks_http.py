"""Fetching an issuer's key set over HTTP (aiohttp, on the event loop, never blocking
it): from its ``jwks_url``, or from the ``jwks_uri`` of its OpenID discovery document.

Only the configured URL (or the one its discovery document names) is ever fetched;
nothing a token says is. Answers are capped in size and time.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

_MAX_BYTES = 512 * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=5.0, connect=2.0)


class HttpKeySource:
    def __init__(
        self, issuer: str, jwks_url: str | None, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url  # None: found through discovery, then remembered
        self.session = session

    async def __call__(self) -> dict[str, Any]:
        if self.jwks_url is None:
            self.jwks_url = await self._discover()
        document = await self._get(self.jwks_url)
        if not isinstance(document, dict):
            raise ValueError("the key set is not a JSON object")
        return document

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get(url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise ValueError("the discovery document is for another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no jwks_uri")
        return jwks_uri

    async def _get(self, url: str) -> Any:
        assert self.session is not None, "the gateway has started"
        async with self.session.get(
            url, timeout=_TIMEOUT, allow_redirects=False, headers={"accept": "application/json"}
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"{url} answered {resp.status}")
            body = await resp.content.read(_MAX_BYTES + 1)
        if len(body) > _MAX_BYTES:
            raise ValueError(f"{url} answered more than {_MAX_BYTES} bytes")
        return orjson.loads(body)
