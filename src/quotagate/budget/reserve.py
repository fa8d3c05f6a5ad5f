"""What a request reserves before it is forwarded: tokens and money, settled later.

Tokens: the prompt estimate plus the most the answer may produce (``max_tokens``, or
the plan's default, for each of the ``n`` choices). Money: those tokens at the model's
price, in micro-units. A request that names no cap is sent the plan's default, so that
the answer cannot outgrow what was reserved.
"""

from __future__ import annotations

from typing import Any

import orjson

from quotagate.budget.estimate import Estimator
from quotagate.budget.pricing import cost_micros
from quotagate.errors import BadRequest, RateLimited
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import set_output_cap
from quotagate.routing.catalog import Target
from quotagate.store.base import ReservationCheck


def reserve(
    ctx: RequestContext,
    default_max_tokens: int,
    estimator: Estimator,
    target: Target | None = None,
) -> None:
    """For ``ctx``'s model, or ``target``'s (a fallback about to serve it) when given."""
    model, price = (ctx.model, ctx.price) if target is None else (target.model, target.prices)
    ctx.prompt_estimate = estimator.prompt_tokens(ctx.payload, ctx.endpoint.name, model)
    output = 0
    if ctx.endpoint.generates:
        cap = ctx.max_tokens
        if cap is None:  # the upstream is told the cap that was reserved
            cap = default_max_tokens
            set_output_cap(ctx, cap)
        output = cap * ctx.choices
    ctx.reserved_tokens = ctx.prompt_estimate + output
    ctx.reserved_micros = cost_micros(ctx.prompt_estimate, output, price)


def too_large(name: str, capacity: int, ctx: RequestContext) -> RateLimited:
    """For a token rate limit (TPM): a 429, as OpenAI answers a request too large for
    its TPM."""
    return RateLimited(
        f"Request too large for {name}: it {_may(ctx, f'use {ctx.reserved_tokens} tokens')}"
        f", more than the limit of {capacity}. {_LOWER}",
        code="request_too_large",
    )


def larger_than_quota(whole: str, may: str, ctx: RequestContext) -> BadRequest:
    """For a quota or budget (``whole``: which, and its amount): no reset would let the
    request through, so it is the client's to change (400), not used up (402)."""
    return BadRequest(
        f"This request {_may(ctx, may)}, more than your whole {whole}. {_LOWER}",
        code="request_too_large",
        param="max_tokens",
    )


_LOWER = "Lower max_tokens or shorten the prompt."


def _may(ctx: RequestContext, what: str) -> str:
    """The clause "may <what> (prompt ~P + max_tokens M [x n N])": what was reserved."""
    output = ctx.reserved_tokens - ctx.prompt_estimate
    n = ctx.choices
    asked = f"max_tokens {output // n} x n {n}" if n > 1 else f"max_tokens {output}"
    return f"may {what} (prompt ~{ctx.prompt_estimate} + {asked})"


def reservation_record(
    ctx: RequestContext, ttl: float, target: Target | None = None
) -> ReservationCheck:
    """What a reaper needs to write the ledger row if this gateway never settles; the
    model and deployment are ``target``'s when given (a fallback about to serve it)."""
    p = ctx.principal
    model, target = (ctx.model, ctx.target) if target is None else (target.model, target)
    assert p is not None and target is not None, "limit runs after auth and route"
    record: dict[str, Any] = {
        "id": ctx.record_id,
        "at": ctx.started_at,
        "tenant": p.tenant_id,
        "key": p.key_id,
        "user": p.user,
        "model": model,
        "deployment": target.base_url,
        "endpoint": ctx.endpoint.name,
        "stream": ctx.stream,
        "tokens": ctx.reserved_tokens,
        "micros": ctx.reserved_micros,
    }
    return ReservationCheck(f"rs:{{t:{p.tenant_id}}}", orjson.dumps(record).decode(), ttl)
