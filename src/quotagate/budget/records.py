"""The ledger row of a request, built from its context once it has ended."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from quotagate.budget.ledger import LedgerRecord
from quotagate.pipeline.context import RequestContext

# The runner's decision → the ledger's status.
_STATUS = {"allowed": "ok", "client_disconnected": "client_disconnected", "replayed": "replayed"}


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
    return LedgerRecord(
        request_id=ctx.record_id,
        created_at=datetime.fromtimestamp(ctx.started_at, UTC),
        tenant_id=p.tenant_id,
        key_id=p.key_id,
        user_id=p.user,
        model=ctx.model or None,
        deployment=ctx.target.base_url if ctx.target is not None else None,
        endpoint=ctx.endpoint.name,
        status=status,
        http_status=ctx.status,
        denial_reason=ctx.denial,
        stream=ctx.stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_micros=micros,
        reserved_tokens=ctx.reserved_tokens,
        reserved_micros=ctx.reserved_micros,
        duration_ms=round((ended - started) * 1000, 3),
        ttfb_ms=round((ctx.ttfb - started) * 1000, 3) if ctx.ttfb else None,
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
