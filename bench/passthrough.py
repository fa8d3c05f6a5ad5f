"""The bare pass-through proxy: the gateway's stack with none of the gateway.

Raw ASGI on uvicorn (httptools, uvloop, no access log) that reads the request body and
POSTs it with one pooled aiohttp session to the upstream, then answers with the
upstream's status, body and content-type. No auth, no parsing, no limits, no metrics:
the ceiling the gateway is measured against in ``bench/run.py``.

    python bench/passthrough.py --listen 127.0.0.1:8001 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

_UPSTREAM_PREFIX = "/v1"
_HEALTH = b'{"status":"ok"}'


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def _read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class PassThrough:
    """``POST /v1/<anything>`` → ``POST <upstream>/<anything>``; ``GET /healthz`` → 200."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        if path == "/healthz":
            await _answer(send, 200, _HEALTH, b"application/json")
            return
        if not path.startswith(_UPSTREAM_PREFIX + "/"):
            await _answer(send, 404, b'{"error":"not found"}', b"application/json")
            return
        assert self._session is not None, "lifespan started the session"
        body = await _read_body(receive)
        url = self._upstream + path[len(_UPSTREAM_PREFIX) :]
        headers = {"content-type": "application/json"}
        async with self._session.post(url, data=body, headers=headers) as resp:
            data = await resp.read()
            content_type = resp.headers.get("content-type", "application/octet-stream")
            await _answer(send, resp.status, data, content_type.encode())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The same pool settings as the gateway's upstream client.
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=60),
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent", "Accept-Encoding"),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8001", help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="upstream /v1 base URL")
    args = parser.parse_args()
    host, port = _split_listen(args.listen)
    uvicorn.run(
        PassThrough(args.upstream),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
