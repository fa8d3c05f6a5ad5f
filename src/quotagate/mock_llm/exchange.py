"""One HTTP request/response over raw ASGI, with the mock's response headers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NoReturn

from .errors import DroppedConnection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
HeaderTuple = tuple[tuple[bytes, bytes], ...]

# Built once: every JSON answer shares these bytes.
_JSON = (b"content-type", b"application/json")
_SSE: HeaderTuple = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
)


class Exchange:
    """The request as the handlers see it, and the ways they may answer it."""

    __slots__ = (
        "_watch",
        "body",
        "receive",
        "request_headers",
        "response_headers",
        "scope",
        "send",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.request_headers: Headers = scope["headers"]
        self.response_headers = headers  # x-mock-request-id and friends
        self.body: object = None
        self._watch: ClientWatch | None = None

    async def send_json(self, status: int, body: bytes, extra: HeaderTuple = ()) -> None:
        headers = [*self._json_headers(body), *extra]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def send_truncated_json(self, status: int, body: bytes) -> NoReturn:
        """Promise the whole body, send half, then make the server drop the connection."""
        headers = self._json_headers(body)
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        half = body[: len(body) // 2]
        await self.send({"type": "http.response.body", "body": half, "more_body": True})
        raise DroppedConnection("mock dropped the response body")

    async def start_stream(self) -> None:
        headers = [*_SSE, *self.response_headers]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send_chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data})

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the client has gone away."""
        return await self._client_watch().sleep(seconds)

    async def until_client_leaves(self) -> None:
        await self._client_watch().gone()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def _json_headers(self, body: bytes) -> Headers:
        return [_JSON, (b"content-length", b"%d" % len(body)), *self.response_headers]

    def _client_watch(self) -> ClientWatch:
        if self._watch is None:
            self._watch = ClientWatch(self.receive)
        return self._watch


class ClientWatch:
    """Notices the client leaving while a handler sleeps.

    Only created for requests that wait, so a fast answer pays for no extra task.
    """

    __slots__ = ("_task",)

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.ensure_future(_wait_for_disconnect(receive))

    async def sleep(self, seconds: float) -> bool:
        done, _ = await asyncio.wait((self._task,), timeout=seconds)
        return not done

    async def gone(self) -> None:
        await asyncio.shield(self._task)

    def close(self) -> None:
        self._task.cancel()


async def _wait_for_disconnect(receive: Receive) -> None:
    # The request body has been read, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # one message holds a small request whole: skip the join
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)
