"""The pooled upstream HTTP client, and translation of its failures.

aiohttp's exceptions enter the gateway here and nowhere else: they leave as the most
specific ``UpstreamError`` (see ``quotagate.errors``).
"""

from __future__ import annotations

import aiohttp

from quotagate.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

# Connections kept per gateway process; per-deployment caps come with routing.
_POOL_SIZE = 1000


KEEPALIVE_TIMEOUT = 4.0  # seconds; below the 5 s idle timeout of uvicorn-based servers


def new_session() -> aiohttp.ClientSession:
    # An idle pooled connection is dropped before the model server drops it: uvicorn
    # (vLLM's and most Python servers') closes idle keep-alive connections after 5 s,
    # and a request sent on one it is closing fails with a reset (seen as 502s after a
    # lull: tests/integration/test_distributed_limits.py).
    connector = aiohttp.TCPConnector(
        limit=_POOL_SIZE, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_TIMEOUT
    )
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
