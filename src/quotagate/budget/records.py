"""The ledger row of a request, built from its context once it has ended."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from quotagate.budget.ledger import LedgerRecord
from quotagate.pipeline.context import RequestContext

# The runner's decision → the ledger's status.
_STATUS = {
    "allowed": "ok",
    "cache_hit": "ok",  # answered from the response cache (degrade): a success
    "client_disconnected": "client_disconnected",
    "replayed": "replayed",
}


def request_record(
    ctx: RequestContext, started: float, ended: float, charged: tuple[int, int], micros: int
) -> LedgerRecord:
    """``charged``: prompt and completion tokens (``settle.split``)."""
    p = ctx.principal
    assert p is not None, "only authenticated requests are recorded"
    prompt, completion = charged
    status = _STATUS.get(ctx.decision)
    if status is None:
        status = "denied" if 400 <= ctx.status < 500 else "error"
    return LedgerRecord(  # positional, in field order: kwargs cost more per request
        ctx.record_id,
        datetime.fromtimestamp(ctx.started_at, UTC),
        ctx.endpoint.name,
        status,
        ctx.status,
        p.tenant_id,
        p.key_id,
        p.user,
        ctx.model or None,
        ctx.target.base_url if ctx.target is not None else None,
        ctx.denial,
        ctx.stream,
        prompt,
        completion,
        micros,
        ctx.reserved_tokens,
        ctx.reserved_micros,
        round((ended - started) * 1000, 3),
        round((ctx.ttfb - started) * 1000, 3) if ctx.ttfb else None,
    )


def unsettled_record(member: str) -> LedgerRecord:
    """The row a reaper writes for a reservation its gateway never settled: charged
    what it reserved (the counters keep it)."""
    r: dict[str, Any] = orjson.loads(member)
    return LedgerRecord(
        request_id=r["id"],
        created_at=datetime.fromtimestamp(r["at"], UTC),
        tenant_id=r["tenant"],
        key_id=r["key"],
        user_id=r["user"],
        model=r["model"],
        deployment=r["deployment"],
        endpoint=r["endpoint"],
        status="unsettled",
        http_status=0,
        denial_reason=None,
        stream=r["stream"],
        prompt_tokens=0,
        completion_tokens=0,
        cost_micros=r["micros"],
        reserved_tokens=r["tokens"],
        reserved_micros=r["micros"],
        duration_ms=0.0,
        ttfb_ms=None,
    )
