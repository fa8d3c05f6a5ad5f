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
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
import orjson

from quotagate.budget.idempotency import MAX_KEPT
from quotagate.errors import GatewayError, NoDeployment, UpstreamError
from quotagate.observability.metrics import FALLBACK_REFUSALS, UPSTREAM_RETRIES
from quotagate.pipeline.context import Headers, RequestContext
from quotagate.pipeline.parse import TOKEN_FIELDS
from quotagate.pipeline.stage import Answered, PolicySource
from quotagate.routing.cache import ResponseCache
from quotagate.routing.catalog import Target
from quotagate.routing.router import Router, switch_model
from quotagate.upstream.client import translate
from quotagate.upstream.usage import StreamUsage, Usage, usage_of

log = logging.getLogger(__name__)
_MIN_ATTEMPT = 0.05  # seconds: a retry with less time left than this is not tried

# Upstream response headers a client may see; everything else (hop-by-hop, the
# upstream's own rate-limit and request-id headers) stays behind.
_PASS = frozenset(
    {"content-type", "content-encoding", "openai-processing-ms", "openai-version", "retry-after"}
)


def _passed_headers(resp: aiohttp.ClientResponse) -> Headers:
    return [(k.lower().encode(), v.encode()) for k, v in resp.headers.items() if k.lower() in _PASS]


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    """An upstream's ``retry-after`` in seconds (delta-seconds form), if it sent one."""
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not waited for
    return seconds if 0 <= seconds < 86400 else None


def sse_error(exc: GatewayError) -> bytes:
    error = {"message": exc.message, "type": exc.error_type, "param": None, "code": exc.code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


class SessionSource(Protocol):
    session: aiohttp.ClientSession | None


# Limit.move: count an admitted request against the fallback model about to serve it;
# None when done, else the name of that model's limit that refuses it.
Move = Callable[[RequestContext, Target], Awaitable[str | None]]


class Forward:
    """Send to the chosen deployment; before any byte has reached the client, a
    retryable failure (connect error, timeout, 5xx, 429, the upstream refusing the
    gateway's credential) is retried on another deployment or fallback model, within
    the attempts, the total deadline and the retry budget. An upstream 429's
    ``retry-after`` is honoured: that deployment is left alone until then, and waited
    for when it is the only one (up to ``max_retry_after``). The reservation made by
    ``limit`` carries over to the retry; the price is the deployment that answers."""

    name = "forward"

    def __init__(
        self,
        sessions: SessionSource,
        policy: PolicySource,
        router: Router,
        cache: ResponseCache | None = None,
        move: Move | None = None,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._router = router
        self._cache = cache  # the degrade path when every attempt failed
        self._move = move

    async def __call__(self, ctx: RequestContext) -> None:
        target = ctx.target
        assert target is not None, "forward runs after route"
        session = self._sessions.session
        assert session is not None, "the gateway has started"
        deadline = time.perf_counter() + target.total
        limits = target.timeout  # deadlines of this attempt
        tried: list[Target] = []
        while True:
            health = target.health
            if ctx.held is target:  # shape took this deployment's slot
                probe, ctx.held = ctx.probe, None
                if not probe and not health.sendable(time.monotonic()):
                    # Its circuit opened (or a check or a 429 took it out) while this
                    # request waited in its queue: give the slot back, go elsewhere.
                    health.end(probe)
                    target = await self._spill(ctx, target, tried)
                    health = target.health
                    probe = health.begin()
            else:
                if target.saturated or not health.available(time.monotonic()):
                    # others took its last slot, or its circuit changed, since it was chosen
                    target = await self._spill(ctx, target, tried)
                    health = target.health
                probe = health.begin()
            target.gauge.inc()  # type: ignore[attr-defined]
            resp: aiohttp.ClientResponse | None = None
            try:
                resp, failure = await self._send(ctx, session, target, limits)
                if failure is None:
                    assert resp is not None
                    try:
                        await self._answer(ctx, resp, target, probe)
                        return
                    except UpstreamError as exc:  # the body broke off
                        if ctx.response_started:
                            raise
                        failure = exc  # nothing has reached the client: retryable
                tried.append(target)
                # Only an upstream 429's retry-after is waited for (on the only deployment).
                wait = _retry_after(resp) if resp is not None and resp.status == 429 else None
                nxt = self._next(ctx, tried, deadline, failure, wait)
                if nxt is None:
                    if self._cache is not None and await self._cache.degrade(ctx):
                        return
                    if resp is not None and resp.status == 429:  # the upstream's own limit
                        await self._answer(ctx, resp, target, probe)
                        return
                    raise failure
            finally:
                if resp is not None:
                    resp.release()
                target.gauge.dec()  # type: ignore[attr-defined]
                health.end(probe)
            if nxt is target:  # the only deployment asked to wait: wait, then ask again
                await asyncio.sleep(wait or 0.0)
                nxt.health.cooling_until = 0.0  # its retry-after has been waited out
            elif nxt.model != ctx.model:
                moved = await self._switch(ctx, nxt, tried, "outage")
                if moved is None:  # the fallbacks' own limits refuse it
                    if self._cache is not None and await self._cache.degrade(ctx):
                        return
                    raise failure
                nxt = moved
            target = ctx.target = nxt
            ctx.price = nxt.prices
            remaining = deadline - time.perf_counter()
            limits = aiohttp.ClientTimeout(
                total=remaining,
                sock_connect=nxt.timeout.sock_connect,
                sock_read=nxt.timeout.sock_read,
            )

    async def _spill(self, ctx: RequestContext, target: Target, tried: list[Target]) -> Target:
        """``target`` cannot take the request now (full, or its circuit is open): a
        usable deployment of the model or a fallback model; else the cache's answer, or
        503 (overloaded when it was only full)."""
        other = self._router.find(ctx, self._policy.snapshot.catalog, [*tried, target])
        if other is not None and other.model != ctx.model:
            other = await self._switch(ctx, other, [*tried, target], "overload")
        if other is None:
            if self._cache is not None and await self._cache.degrade(ctx):
                raise Answered
            if target.saturated:
                raise NoDeployment(
                    f"Every deployment of {ctx.model} is at capacity; retry shortly.",
                    code="overloaded",
                )
            raise NoDeployment(f"No deployment of {ctx.model} can serve the request now.")
        ctx.target, ctx.price = other, other.prices
        return other

    async def _switch(
        self, ctx: RequestContext, target: Target, tried: list[Target], why: str
    ) -> Target | None:
        """Serve ``ctx`` by ``target``, a deployment of another model, once that model's
        limits have taken the request (``Limit.move``). When they refuse it, the next
        usable deployment of a model not refused yet; None when there is none."""
        refused: list[Target] = []
        found: Target | None = target
        while found is not None and found.model != ctx.model:
            denied = await self._move(ctx, found) if self._move is not None else None
            if denied is None:
                switch_model(ctx, found, why)
                return found
            FALLBACK_REFUSALS.labels(ctx.model, found.model).inc()
            log.info(
                "request %s: fallback %s refused by its limit %s",
                ctx.request_id, found.model, denied,
            )  # fmt: skip
            catalog = self._policy.snapshot.catalog
            refused += catalog[found.model].targets
            found = self._router.find(ctx, catalog, [*tried, *refused])
        return found

    async def _send(
        self,
        ctx: RequestContext,
        session: aiohttp.ClientSession,
        target: Target,
        limits: aiohttp.ClientTimeout,
    ) -> tuple[aiohttp.ClientResponse | None, UpstreamError | None]:
        """One call: the response (and a failure when its status is a retryable one),
        or no response and the failure."""
        headers = dict(target.headers)
        headers["x-request-id"] = ctx.request_id
        # The backend may schedule by these: the plan's priority, the traffic class.
        headers["x-quotagate-priority"] = str(ctx.priority)
        headers["x-quotagate-class"] = ctx.traffic_class or "interactive"
        if ctx.traceparent:  # W3C trace context: the client's, or this gateway's span
            headers["traceparent"] = ctx.traceparent
            if ctx.tracestate:
                headers["tracestate"] = ctx.tracestate
        if ctx.output_cap is not None:
            _write_cap(ctx, target)
        if ctx.payload_changed:  # stages edited the request: encode it once, here
            ctx.body = orjson.dumps(ctx.payload)
            ctx.payload_changed = False
        url = target.base_url + ctx.endpoint.upstream_path
        ctx.upstream_ended = 0.0
        if not ctx.upstream_started:  # upstream time spans the retries
            ctx.upstream_started = time.perf_counter()
        try:
            resp = await session.post(url, data=ctx.body, headers=headers, timeout=limits)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ctx.upstream_ended = time.perf_counter()
            error = translate(exc, ctx.model)
            target.health.failed(error.code or "error")
            target.health.samples.failure()
            return None, error
        status = resp.status
        if status == 429:
            target.health.throttled(_retry_after(resp) or 1.0)
            target.health.samples.failure()  # back-pressure: the adaptive limit backs off
            return resp, UpstreamError(f"The model server for {ctx.model} answered 429.")
        # 5xx, and 401/403 (the gateway's own upstream credential was refused: never the
        # client's fault, and never to be confused with the client's key) are 502s.
        if status >= 500 or status in (401, 403):
            target.health.failed(f"status {status}")
            target.health.samples.failure()
            return resp, UpstreamError(f"The model server for {ctx.model} answered {status}.")
        return resp, None

    def _next(
        self,
        ctx: RequestContext,
        tried: list[Target],
        deadline: float,
        failure: UpstreamError,
        wait: float | None,
    ) -> Target | None:
        """Where to retry, or None: attempts, deadline and the retry budget allowing."""
        config = self._policy.snapshot.policy.routing.retries
        reason = failure.code or "error"
        if len(tried) >= config.attempts:
            UPSTREAM_RETRIES.labels(reason, "attempts").inc()
            return None
        nxt = self._router.find(ctx, self._policy.snapshot.catalog, tried)
        wait_for = 0.0
        if nxt is None and wait is not None and wait <= config.max_retry_after:
            nxt, wait_for = tried[-1], wait  # the only deployment, throttled for `wait`
        if nxt is None:
            UPSTREAM_RETRIES.labels(reason, "no_deployment").inc()
            return None
        if deadline - time.perf_counter() - wait_for <= _MIN_ATTEMPT:
            UPSTREAM_RETRIES.labels(reason, "deadline").inc()
            return None
        if not self._router.budget.allow():
            UPSTREAM_RETRIES.labels(reason, "budget").inc()
            return None
        UPSTREAM_RETRIES.labels(reason, "retried").inc()
        log.info("request %s: %s, retrying on %s", ctx.request_id, failure.message, nxt.name)
        return nxt

    async def _answer(
        self, ctx: RequestContext, resp: aiohttp.ClientResponse, target: Target, probe: int
    ) -> None:
        """Relay the answer; the deployment's health learns how it went."""
        mark = len(ctx.response_headers)
        ctx.response_headers.extend(target.header)
        try:
            await self._relay(ctx, resp)
        except UpstreamError as exc:
            target.health.failed(exc.code or "error")  # a body cut or timed out
            del ctx.response_headers[mark:]  # a retry names its own deployment
            raise
        finally:
            if not ctx.upstream_ended:  # JSON answers are stamped when read in full
                ctx.upstream_ended = time.perf_counter()
        health = target.health
        if ctx.decision in ("upstream_error", "upstream_timeout"):  # a stream broke in-band
            health.failed(ctx.decision)
            health.samples.failure()
        elif resp.status < 500 and resp.status != 429:  # a relayed 429 was counted in _send
            first = ctx.first_token or ctx.upstream_ended
            health.succeeded(first - ctx.upstream_started, probe)
            # Adaptive concurrency's signals: time to first token (streams), and per
            # output token after it (for a JSON answer, the whole call per token).
            tokens = ctx.usage.completion if ctx.usage is not None else 0
            ttft: float | None = None
            tpot: float | None = None
            if ctx.first_token:
                ttft = first - ctx.upstream_started
                if tokens > 1:
                    tpot = (ctx.upstream_ended - first) / (tokens - 1)
            elif tokens:
                tpot = (ctx.upstream_ended - ctx.upstream_started) / tokens
            health.samples.answered(ttft, tpot)
            if ttft is not None and self._router.pressure is not None:
                self._router.pressure.observe(ttft)

    async def _relay(self, ctx: RequestContext, resp: aiohttp.ClientResponse) -> None:
        target = ctx.target
        assert target is not None
        # The headers are in: from now on the longest wait is the idle gap between chunks.
        conn = resp.connection
        if conn is not None and conn.protocol is not None:
            conn.protocol.read_timeout = target.idle
            conn.protocol.start_timeout()
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


def _write_cap(ctx: RequestContext, target: Target) -> None:
    """The cap the gateway set on a request that named none, in the field ``target``'s
    model takes (a retry on another model may take the other one)."""
    field = target.cap_field if ctx.endpoint.name == "chat.completions" else "max_tokens"
    payload = ctx.payload
    if payload.get(field) == ctx.output_cap:
        return
    for other in TOKEN_FIELDS:  # only ever the gateway's own: the client named none
        payload.pop(other, None)
    payload[field] = ctx.output_cap
    ctx.payload_changed = True


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
