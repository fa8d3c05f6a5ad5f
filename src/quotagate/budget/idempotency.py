"""``Idempotency-Key``: a retried request is charged once.

The first request with a key claims it in the shared store (set-if-absent) and goes
on; when it ends with a 2xx, its answer (JSON, or the SSE bytes as relayed, up to
``MAX_KEPT``) is kept for ``accounting.idempotency_ttl`` and replayed to any retry
with the same key and body, with ``idempotent-replayed: true``, charging nothing. A
retry while the first is in flight gets 409; the same key with another body (or the
same body sent to a route that forces another model), 422; a failed first attempt
frees the key so the retry is served (and charged) normally. Keys are per API key: one
caller cannot replay another's answers, and a replay is served only once the plan
still allows the model (the stage runs after ``authorize``).

The claim names its request, and the first request keeps or frees the key only while
no other request holds it (a compare-and-set in the store): a claim lasts
``accounting.reservation_ttl``, and a request slower than that has lost the key to any
retry that came after; its end then leaves the retry's claim (or answer) alone. If no
retry came, its answer is still kept.
"""

from __future__ import annotations

import hashlib
import logging

from quotagate.errors import Conflict
from quotagate.limits.engine import LimitEngine
from quotagate.observability.metrics import IDEMPOTENCY_LOST
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Answered, PolicySource
from quotagate.store.base import StoreUnavailable

log = logging.getLogger(__name__)
MAX_KEPT = 1 << 20  # bytes of an answer kept for replay; a longer one is not replayable
_PENDING, _DONE = b"p", b"d"


def _store_key(ctx: RequestContext) -> str:
    assert ctx.principal is not None, "idempotency runs after authenticate"
    p = ctx.principal
    digest = hashlib.sha256(p.key_id.encode() + b"\0" + ctx.idempotency_key).hexdigest()
    return f"idem:{{t:{p.tenant_id}}}:{digest[:40]}"


class Idempotency:
    name = "idempotency"

    def __init__(self, engine: LimitEngine, policy: PolicySource) -> None:
        self._engine = engine
        self._policy = policy

    async def __call__(self, ctx: RequestContext) -> None:
        if not ctx.idempotency_key:
            return
        key = _store_key(ctx)
        # The model served, not only the bytes: a route alias (/v1/gpt4) may force
        # another model on the same body.
        fingerprint = hashlib.sha256(ctx.model.encode() + b"\0" + ctx.body).digest()[:16]
        ttl = self._policy.snapshot.policy.accounting.reservation_ttl
        # The gateway's own id: a client's X-Request-Id may repeat across its retries.
        claim = _PENDING + fingerprint + ctx.record_id.encode()
        try:
            found = await self._engine.put_if_absent(key, claim, ttl)
        except StoreUnavailable:
            log.warning(
                "idempotency store unavailable: request %s not deduplicated", ctx.request_id
            )
            return
        if found is None:
            ctx.idempotency_store = (key, claim)
            ctx.kept_body = []
            return
        if found[1:17] != fingerprint:
            raise Conflict(
                "This Idempotency-Key was used with a different request body.",
                code="idempotency_key_reused", status=422,
            )  # fmt: skip
        if found[:1] == _PENDING:
            raise Conflict("A request with this Idempotency-Key is still in progress; retry later.")
        await _replay(ctx, found[17:])
        raise Answered

    async def finish(self, ctx: RequestContext) -> None:
        """After the response: keep a 2xx answer for replays; free the key otherwise."""
        if ctx.idempotency_store is None:
            return
        key, claim = ctx.idempotency_store
        kept = ctx.kept_body
        if kept is not None and sum(map(len, kept)) > MAX_KEPT:
            kept = None
        answer = None  # None: free the key
        if 200 <= ctx.status < 300 and kept is not None:
            answer = _DONE + claim[1:17] + ctx.response_type + b"\n" + b"".join(kept)
        ttl = self._policy.snapshot.policy.accounting.idempotency_ttl
        try:
            ours = await self._engine.swap(key, claim, answer, ttl)
        except StoreUnavailable:
            log.warning("idempotency store unavailable: key of %s not updated", ctx.request_id)
            return
        if not ours:
            IDEMPOTENCY_LOST.inc()
            log.warning(
                "request %s outlived its Idempotency-Key claim (accounting.reservation_ttl) "
                "and another request took the key: left to it", ctx.request_id,
            )  # fmt: skip


async def _replay(ctx: RequestContext, answer: bytes) -> None:
    content_type, _, body = answer.partition(b"\n")
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", ctx.request_id.encode()),
        (b"idempotent-replayed", b"true"),
    ]
    ctx.status = 200
    ctx.decision = "replayed"
    ctx.response_started = True
    await ctx.send({"type": "http.response.start", "status": 200, "headers": headers})
    await ctx.send({"type": "http.response.body", "body": body, "more_body": False})
