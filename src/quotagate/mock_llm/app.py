"""The mock upstream as a raw ASGI app: a path table, one error boundary, counters.

No framework on purpose: the mock must never be what limits a benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import orjson

from . import control, endpoints
from .errors import InvalidRequest, MockError
from .exchange import Exchange, Headers, Receive, Scope, Send, read_body
from .settings import MockSettings
from .state import MockState, RecordedRequest

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Exchange, MockState], Awaitable[None]]

ROUTES: dict[str, dict[str, Handler]] = {
    "/v1/chat/completions": {"POST": endpoints.chat_completions},
    "/v1/completions": {"POST": endpoints.completions},
    "/v1/embeddings": {"POST": endpoints.embeddings},
    "/v1/models": {"GET": endpoints.list_models},
    "/healthz": {"GET": endpoints.healthz},
    "/_mock/faults": {"GET": control.get_faults, "POST": control.set_faults},
    "/_mock/stats": {"GET": control.get_stats},
    "/_mock/last-request": {"GET": control.get_last_request},
    "/_mock/stop": {"POST": control.stop},
    "/_mock/load": {"GET": control.get_load},
}

_UPSTREAM_PREFIX = "/v1/"
_BAD_JSON = object()  # a body that did not parse, told apart from JSON null


class MockApp:
    """Dispatches on the path; answers every ``MockError`` as an OpenAI error body."""

    __slots__ = ("_ids", "state")

    def __init__(self, settings: MockSettings) -> None:
        self.state = MockState(settings)
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off and websockets are not served
        exchange = Exchange(scope, receive, send, self._response_headers(scope))
        upstream = scope["path"].startswith(_UPSTREAM_PREFIX)
        if not upstream:  # health and control requests are not counted
            await self._answer(exchange, upstream)
            return
        stats = self.state.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            await self._answer(exchange, upstream)
        finally:
            stats.in_flight -= 1

    async def _answer(self, exchange: Exchange, upstream: bool) -> None:
        """The one error boundary: a ``MockError`` becomes an OpenAI error body."""
        try:
            await self._dispatch(exchange, upstream)
        except MockError as error:
            if upstream:
                self.state.stats.errors += 1
            await exchange.send_json(error.status, error.body(), error.headers)
        finally:
            exchange.close()

    async def _dispatch(self, exchange: Exchange, upstream: bool) -> None:
        scope = exchange.scope
        path, method = scope["path"], scope["method"]
        body = _parse_json(await read_body(exchange.receive)) if method == "POST" else None
        exchange.body = None if body is _BAD_JSON else body
        if upstream:
            self.state.last_request = RecordedRequest(path, exchange.request_headers, exchange.body)
        handler = _route(path, method)
        if body is _BAD_JSON:
            raise InvalidRequest("the request body is not valid JSON")
        await handler(exchange, self.state)

    def _response_headers(self, scope: Scope) -> Headers:
        headers = [(b"x-mock-request-id", b"mock-%d" % next(self._ids))]
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                headers.append((b"x-upstream-saw-request-id", value))
        return headers


def create_app(settings: MockSettings) -> ASGIApp:
    """The mock upstream as an ASGI 3 app; ``settings`` stays live (see ``/_mock/faults``)."""
    return MockApp(settings)


def _route(path: str, method: str) -> Handler:
    methods = ROUTES.get(path)
    if methods is None:
        raise MockError(404, f"no such path: {path}")
    handler = methods.get(method)
    if handler is None:
        allow = ", ".join(methods).encode()
        raise MockError(405, f"method {method} not allowed on {path}", headers=((b"allow", allow),))
    return handler


def _parse_json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _BAD_JSON
