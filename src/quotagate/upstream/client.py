"""The pooled upstream HTTP client, and translation of its failures.

aiohttp's exceptions enter the gateway here and nowhere else: they leave as the most
specific ``UpstreamError`` (see ``quotagate.errors``).
"""

from __future__ import annotations

import aiohttp

from quotagate.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

# Connections kept per gateway process; per-deployment caps come with routing.
_POOL_SIZE = 1000


def new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=_POOL_SIZE, ttl_dns_cache=300, keepalive_timeout=60)
    # Bytes pass through untouched: no decompression, no default User-Agent/Accept-Encoding.
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        raise_for_status=False,
    )


def translate(exc: BaseException, target: str) -> UpstreamError:
    """The gateway error for an aiohttp/asyncio failure talking to ``target``."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"The model server for {target} did not answer in time.")
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionError):
        return UpstreamUnavailable(f"The model server for {target} is unreachable.")
    return UpstreamError(f"The model server for {target} failed ({type(exc).__name__}).")
