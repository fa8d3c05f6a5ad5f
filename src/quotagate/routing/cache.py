"""Exact-match response cache, per tenant, for deterministic requests only.

A request is deterministic when it asks for ``temperature: 0`` and one choice (``n``
absent or 1), or is an embedding. Its key is the tenant, the endpoint and the request
normalised (keys sorted; ``user`` and the gateway's own ``stream_options`` edit left
out), hashed. Plans choose (``plans.<p>.cache``):

- ``always``: a hit is answered from the cache (after the limits: rate limits count it,
  tokens and money are not charged) with ``x-quotagate-cache: hit``; a miss is
  forwarded, and its 2xx answer kept for ``routing.cache.ttl``;
- ``degrade``: answers are kept the same way, but served only when no deployment of the
  model or its fallbacks can (every circuit open, all at capacity, every retry failed):
  a lower tier gets a recent answer instead of a 503;
- ``off``: neither.

Entries live in this process (``store: memory``, least recently used dropped beyond
``max_entries``) or in the limits store's Redis (``store: redis``, shared by every
instance, expired by Redis).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson

from quotagate.config.schema import CacheConfig
from quotagate.limits.engine import LimitEngine
from quotagate.observability.metrics import CACHE_LOOKUPS
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Answered, PolicySource
from quotagate.store.base import StoreUnavailable
from quotagate.upstream.usage import Usage

log = logging.getLogger(__name__)
_HIT, _MISS = CACHE_LOOKUPS.labels("hit"), CACHE_LOOKUPS.labels("miss")
_STORED, _SKIPPED = CACHE_LOOKUPS.labels("stored"), CACHE_LOOKUPS.labels("skipped")
_IGNORED = frozenset({"user", "stream_options"})
NO_USAGE = Usage(0, 0)


def deterministic(ctx: RequestContext) -> bool:
    if not ctx.endpoint.generates:
        return True  # embeddings
    payload = ctx.payload
    temperature = payload.get("temperature")
    n = payload.get("n")
    return (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and temperature == 0
        and (n is None or n == 1)
    )


def cache_key(ctx: RequestContext) -> str:
    assert ctx.principal is not None, "the cache runs after authenticate"
    normal = {k: v for k, v in ctx.payload.items() if k not in _IGNORED}
    options = ctx.payload.get("stream_options")
    # Whether the client itself asked for the usage chunk (the gateway may have added it).
    asked = isinstance(options, dict) and options.get("include_usage") is True
    normal["\0usage"] = asked and not ctx.strip_usage
    normal["\0endpoint"] = ctx.endpoint.upstream_path
    digest = hashlib.sha256(orjson.dumps(normal, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"cache:{{t:{ctx.principal.tenant_id}}}:{digest[:48]}"


class _MemoryEntries:
    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[0]

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (value, time.monotonic() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class ResponseCache:
    """The cache stage (``always`` plans), the degrade path (route, forward), and the
    finisher that keeps answers."""

    name = "cache"

    def __init__(self, policy: PolicySource, engine: LimitEngine) -> None:
        self._policy = policy
        self._engine = engine
        self._memory = _MemoryEntries(self.config.max_entries)

    @property
    def config(self) -> CacheConfig:
        return self._policy.snapshot.policy.routing.cache

    async def __call__(self, ctx: RequestContext) -> None:
        """After the limits: answer a hit (``always``), or mark a miss to be kept; for a
        request no deployment could take (route left it to us), the degrade path."""
        if ctx.unroutable is not None:
            if await self.degrade(ctx):
                raise Answered
            raise ctx.unroutable
        mode = ctx.plan.cache if ctx.plan is not None else "off"
        if mode == "off":
            return
        if not deterministic(ctx):
            _SKIPPED.inc()
            return
        key = cache_key(ctx)
        if mode == "always":
            found = await self._get(key)
            if found is not None:
                _HIT.inc()
                await self._answer(ctx, found)
                raise Answered
            _MISS.inc()
            ctx.response_headers.append((b"x-quotagate-cache", b"miss"))
        ctx.cache_key = key
        if ctx.kept_body is None:
            ctx.kept_body = []

    def could_serve(self, ctx: RequestContext) -> bool:
        """Might a kept answer stand in for this request (plan and request allow it)?"""
        plan = ctx.plan
        return plan is not None and plan.cache != "off" and deterministic(ctx)

    async def degrade(self, ctx: RequestContext) -> bool:
        """No deployment could serve ``ctx``: answer from the cache if the plan allows
        it and an answer is kept; True when answered."""
        if ctx.response_started or ctx.plan is None or ctx.plan.cache == "off":
            return False
        if not deterministic(ctx):
            return False
        found = await self._get(ctx.cache_key or cache_key(ctx))
        if found is None:
            _MISS.inc()
            return False
        _HIT.inc()
        ctx.response_headers.append((b"x-quotagate-degraded", b"cache"))
        await self._answer(ctx, found)
        return True

    async def finish(self, ctx: RequestContext) -> None:
        """After the response: keep a whole 2xx answer of a cacheable request (one a
        fallback model answered has no key any more: ``switch_model``)."""
        key, kept = ctx.cache_key, ctx.kept_body
        if not key or kept is None or not 200 <= ctx.status < 300 or ctx.decision != "allowed":
            return
        body = b"".join(kept)
        if len(body) > self.config.max_bytes:
            return
        value = ctx.response_type + b"\n" + body
        try:
            if self.config.store == "redis":
                await self._engine.put(key, value, self.config.ttl)
            else:
                await self._memory.put(key, value, self.config.ttl)
        except StoreUnavailable:
            log.warning("response cache store unavailable: %s not kept", ctx.request_id)
            return
        _STORED.inc()

    async def _get(self, key: str) -> bytes | None:
        if self.config.store != "redis":
            return await self._memory.get(key)
        try:
            return await self._engine.get(key)
        except StoreUnavailable:
            return None

    @staticmethod
    async def _answer(ctx: RequestContext, found: bytes) -> None:
        content_type, _, body = found.partition(b"\n")
        headers: list[tuple[bytes, Any]] = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", ctx.request_id.encode()),
            (b"x-quotagate-cache", b"hit"),
            (b"x-quotagate-model", ctx.model.encode()),
        ]
        headers.extend(h for h in ctx.response_headers if h[0] != b"x-quotagate-cache")
        ctx.status = 200
        ctx.decision = "cache_hit"
        ctx.usage = NO_USAGE  # nothing was generated: nothing is charged
        ctx.response_type = content_type
        if ctx.kept_body is not None:  # an Idempotency-Key: a replay gets the same answer
            ctx.kept_body.append(body)
        ctx.response_started = True
        await ctx.send({"type": "http.response.start", "status": 200, "headers": headers})
        await ctx.send({"type": "http.response.body", "body": body, "more_body": False})
