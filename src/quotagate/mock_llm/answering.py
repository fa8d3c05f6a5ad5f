"""Answering a completion request: faults first, then the whole answer or its stream.

Written once for chat and text completions; ``shapes`` supplies the JSON of each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson

from .directives import Directives
from .errors import DroppedConnection, MockError
from .exchange import Exchange
from .faults import OVERLOADED, Fault, FaultPlan, choose_fault, overloaded
from .generation import Choice, plan_choices, prompt_digest
from .openai_requests import GenerationRequest
from .pacing import Pacing
from .shapes import AnswerMeta, AnswerShape, JSONObject, usage_block
from .sse import DONE, sse_event
from .state import MockState

# Kinds of stream event; only tokens are paced, and a drop never precedes an opening.
_OPENING, _TOKEN, _FINISH, _USAGE = range(4)


async def take_fault(exchange: Exchange, state: MockState, directives: Directives) -> FaultPlan:
    """Raise an injected error, or sit out a hang; return the plan for what remains."""
    plan = choose_fault(directives, state.settings, state.rng)
    if plan.fault is Fault.NONE and overloaded(state.settings, state.stats.in_flight, state.rng):
        plan = OVERLOADED
    if plan.fault is Fault.ERROR:
        extra = () if plan.retry_after is None else ((b"retry-after", plan.retry_after.encode()),)
        raise MockError(plan.status, f"mock injected error {plan.status}", headers=extra)
    if plan.fault is Fault.HANG:
        state.stats.hangs += 1
        await exchange.until_client_leaves()
    elif plan.fault is Fault.DROP:
        state.stats.drops += 1
    return plan


async def answer_completion(
    exchange: Exchange, state: MockState, request: GenerationRequest, shape: AnswerShape
) -> None:
    plan = await take_fault(exchange, state, request.directives)
    if plan.fault is Fault.HANG:
        return
    choices = plan_choices(request, state.settings.default_completion_tokens)
    meta = AnswerMeta(
        shape.id_prefix + prompt_digest(request.prompts[0]), int(time.time()), request.model
    )
    completion_tokens = sum(len(choice.deltas) for choice in choices)
    usage = usage_block(request.prompt_tokens, completion_tokens)
    pacing = Pacing.of(state.settings, request.directives, state.stats.in_flight)
    drop = plan.fault is Fault.DROP
    if not request.stream:
        total_s = pacing.total_s(completion_tokens)
        if total_s > 0 and not await exchange.pause(total_s):
            return  # the client gave up; nobody is left to answer
        await send_whole(exchange, orjson.dumps(shape.completion(meta, choices, usage)), drop)
        return
    events = _stream_events(shape, meta, choices, usage if request.include_usage else None)
    # A dropped stream is cut half-way through its tokens, after the opening chunk.
    await _stream(exchange, events, pacing, completion_tokens // 2 if drop else None)


async def send_whole(exchange: Exchange, body: bytes, drop: bool) -> None:
    if drop:
        await exchange.send_truncated_json(200, body)
    await exchange.send_json(200, body)


def _stream_events(
    shape: AnswerShape, meta: AnswerMeta, choices: list[Choice], usage: JSONObject | None
) -> Iterator[tuple[int, JSONObject]]:
    for choice in choices:
        opening = shape.opening(meta, choice.index)
        if opening is not None:
            yield _OPENING, opening
        for text in choice.deltas:
            yield _TOKEN, shape.delta(meta, choice.index, text, None)
        yield _FINISH, shape.delta(meta, choice.index, "", choice.finish_reason)
    if usage is not None:
        yield _USAGE, shape.usage(meta, usage)


async def _stream(
    exchange: Exchange, events: Iterator[tuple[int, JSONObject]], pacing: Pacing, cut: int | None
) -> None:
    await exchange.start_stream()
    tokens = 0
    for kind, chunk in events:
        if cut is not None and kind != _OPENING and tokens >= cut:
            raise DroppedConnection("mock dropped the stream")
        if kind == _TOKEN:
            delay = pacing.before_token(tokens)
            if delay > 0 and not await exchange.pause(delay):
                return  # the client gave up mid-stream
            tokens += 1
        await exchange.send_chunk(sse_event(chunk))
    await exchange.end_stream(DONE)
