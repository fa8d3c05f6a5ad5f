"""``forward``: send the request upstream and pass the answer back.

JSON answers are read whole and sent with a content-length; SSE streams are passed
through chunk by chunk as they arrive, never buffered. Once the first byte has gone
to the client a failure can no longer change the status, so it is reported in-band
as an SSE error event and the stream is ended cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import aiohttp
import orjson

from quotagate.budget.idempotency import MAX_KEPT
from quotagate.errors import GatewayError, UpstreamError
from quotagate.observability.metrics import in_flight
from quotagate.pipeline.context import Headers, RequestContext
from quotagate.upstream.client import translate
from quotagate.upstream.usage import StreamUsage, Usage, usage_of

log = logging.getLogger(__name__)

# Upstream response headers a client may see; everything else (hop-by-hop, the
# upstream's own rate-limit and request-id headers) stays behind.
_PASS = frozenset(
    {"content-type", "content-encoding", "openai-processing-ms", "openai-version", "retry-after"}
)


def _passed_headers(resp: aiohttp.ClientResponse) -> Headers:
    return [(k.lower().encode(), v.encode()) for k, v in resp.headers.items() if k.lower() in _PASS]


def sse_error(exc: GatewayError) -> bytes:
    error = {"message": exc.message, "type": exc.error_type, "param": None, "code": exc.code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


class SessionSource(Protocol):
    session: aiohttp.ClientSession | None


class Forward:
    name = "forward"

    def __init__(self, sessions: SessionSource) -> None:
        self._sessions = sessions

    async def __call__(self, ctx: RequestContext) -> None:
        target = ctx.target
        assert target is not None, "forward runs after route"
        session = self._sessions.session
        assert session is not None, "the gateway has started"
        headers = dict(target.headers)
        headers["x-request-id"] = ctx.request_id
        if ctx.traceparent:  # W3C trace context: the client's, or this gateway's span
            headers["traceparent"] = ctx.traceparent
            if ctx.tracestate:
                headers["tracestate"] = ctx.tracestate
        url = target.base_url + ctx.endpoint.upstream_path
        if ctx.payload_changed:  # stages edited the request: encode it once, here
            ctx.body = orjson.dumps(ctx.payload)
        flight = in_flight(target.model, target.region, target.index)
        flight.inc()
        ctx.upstream_started = time.perf_counter()
        try:
            try:
                resp = await session.post(
                    url, data=ctx.body, headers=headers, timeout=target.timeout
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                ctx.upstream_ended = time.perf_counter()
                raise translate(exc, ctx.model) from exc
            try:
                await self._relay(ctx, resp)
            finally:
                resp.release()
                if not ctx.upstream_ended:  # JSON answers are stamped when read in full
                    ctx.upstream_ended = time.perf_counter()
        finally:
            flight.dec()

    async def _relay(self, ctx: RequestContext, resp: aiohttp.ClientResponse) -> None:
        # 5xx, and 401/403 (the gateway's own upstream credential was refused: never the
        # client's fault, and never to be confused with the client's key) are 502s.
        if resp.status >= 500 or resp.status in (401, 403):
            raise UpstreamError(f"The model server for {ctx.model} answered {resp.status}.")
        headers = _passed_headers(resp)
        if resp.content_type == "text/event-stream":
            await self._stream(ctx, resp, headers)
            return
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise translate(exc, ctx.model) from exc
        ctx.upstream_ended = time.perf_counter()
        if resp.status < 400:  # no usage block: settlement keeps the reservation
            ctx.usage = usage_of(body)
        headers.append((b"content-length", str(len(body)).encode()))
        if ctx.kept_body is not None:  # an Idempotency-Key: keep the answer for replays
            ctx.response_type = resp.headers.get("content-type", "").encode()
            ctx.kept_body.append(body)
        await self._start(ctx, resp.status, headers)
        await ctx.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _start(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        headers.append((b"x-request-id", ctx.request_id.encode()))
        headers.extend(ctx.response_headers)
        ctx.status = status
        ctx.response_started = True
        ctx.ttfb = time.perf_counter()
        await ctx.send({"type": "http.response.start", "status": status, "headers": headers})

    async def _stream(
        self, ctx: RequestContext, resp: aiohttp.ClientResponse, headers: Headers
    ) -> None:
        headers.append((b"cache-control", b"no-cache"))
        await self._start(ctx, resp.status, headers)
        usage = StreamUsage(ctx.strip_usage)
        # Watch for the client leaving so an abandoned stream stops pulling upstream.
        pump = asyncio.ensure_future(self._pump(ctx, resp, usage))
        gone = asyncio.ensure_future(_disconnected(ctx))
        try:
            done, _ = await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
            if pump not in done:  # the client left before the stream ended
                pump.cancel()
                ctx.decision = "client_disconnected"
                ctx.kept_body = None
                await asyncio.gather(pump, return_exceptions=True)
                return
            gone.cancel()
            await pump
        finally:
            if resp.status < 400:
                # What the upstream reported, else what was seen produced (a cut stream).
                seen = usage.produced_tokens
                if ctx.reservation is not None:  # an estimate never exceeds what was reserved
                    seen = min(seen, max(0, ctx.reserved_tokens - ctx.prompt_estimate))
                produced = Usage(ctx.prompt_estimate, seen)
                ctx.usage = usage.usage if usage.usage is not None else produced

    async def _pump(
        self, ctx: RequestContext, resp: aiohttp.ClientResponse, usage: StreamUsage
    ) -> None:
        send = ctx.send
        if ctx.kept_body is not None:
            ctx.response_type = b"text/event-stream"
        try:
            async for chunk in resp.content.iter_any():
                out = usage.feed(chunk)
                if not ctx.first_token and usage.text_chars:  # a role-only chunk is no token
                    ctx.first_token = time.perf_counter()
                if out:
                    _keep(ctx, out)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if rest := usage.flush():
                _keep(ctx, rest)
                await send({"type": "http.response.body", "body": rest, "more_body": True})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = translate(exc, ctx.model)
            ctx.decision = error.decision
            log.warning("stream %s broke: %s", ctx.request_id, error.message)
            ctx.kept_body = None  # a broken stream is not an answer to replay
            await send({"type": "http.response.body", "body": sse_error(error), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(ctx: RequestContext) -> None:
    while (await ctx.receive())["type"] != "http.disconnect":
        pass


def _keep(ctx: RequestContext, data: bytes) -> None:
    """Hold a streamed answer for replay (an Idempotency-Key), up to ``MAX_KEPT``: past
    it the answer is not replayable, so nothing more is held."""
    kept = ctx.kept_body
    if kept is None:
        return
    kept.append(data)
    ctx.kept_bytes += len(data)
    if ctx.kept_bytes > MAX_KEPT:
        ctx.kept_body = None
