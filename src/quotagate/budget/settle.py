"""Settlement: replace what a request reserved by what it used.

Used is the upstream's ``usage``; a cut stream is charged the prompt plus what was seen
produced (the forward stage builds that); an answer without a usage block keeps the
reservation (never guess below it); no answer (an upstream failure, a refusal after
reserving) is refunded whole.
"""

from __future__ import annotations

from quotagate.budget.pricing import cost_micros
from quotagate.pipeline.context import RequestContext


def used(ctx: RequestContext) -> tuple[int, int]:
    """(tokens, micro-units) this request is charged."""
    if ctx.usage is not None:
        return ctx.usage.total, cost_micros(ctx.usage.prompt, ctx.usage.completion, ctx.price)
    if 0 < ctx.status < 400 and ctx.target is not None:
        return ctx.reserved_tokens, ctx.reserved_micros
    return 0, 0


def split(ctx: RequestContext, tokens: int) -> tuple[int, int]:
    """(prompt, completion) of the ``tokens`` charged: the upstream's usage, else the
    reservation kept when the answer reported none (prompt estimate + the rest)."""
    if ctx.usage is not None:
        return ctx.usage.prompt, ctx.usage.completion
    if tokens:
        return ctx.prompt_estimate, tokens - ctx.prompt_estimate
    return 0, 0


def deltas(ctx: RequestContext, tokens: int, micros: int) -> list[int]:
    """Per settled counter: charge (+) or refund (-) the difference to the reservation."""
    more_tokens, more_micros = tokens - ctx.reserved_tokens, micros - ctx.reserved_micros
    return [more_tokens if unit == "tokens" else more_micros for unit in ctx.settle_units]
