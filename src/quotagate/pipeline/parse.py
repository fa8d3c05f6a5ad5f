"""``parse``: read the body under the size cap, parse JSON, pick out what routing needs."""

from __future__ import annotations

from typing import Any

import orjson

from quotagate.errors import BadRequest, PayloadTooLarge
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import PolicySource


class ClientDisconnected(Exception):
    """The client went away before the request was read; nothing to answer."""


async def read_body(ctx: RequestContext, cap: int) -> bytes:
    if ctx.content_length > cap:
        raise PayloadTooLarge(f"Request body is larger than the limit of {cap} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await ctx.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:  # enforced while reading: a lying or absent content-length
            raise PayloadTooLarge(f"Request body is larger than the limit of {cap} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
CHOICE_FIELDS = ("n", "best_of")  # best_of: completions generated (and billed), one returned
# Far above any model's output, and within what the ledger's columns hold (int32 tokens)
# once multiplied by the choices: a larger value is a client error, not a reservation.
MAX_OUTPUT_TOKENS = 10_000_000
MAX_CHOICES = 128  # OpenAI's own limit on n


def _largest(payload: dict[str, Any], fields: tuple[str, ...], most: int) -> int | None:
    """The largest of ``fields`` the request names, each a positive integer up to
    ``most``: both token fields are checked, since an upstream may honour either, and
    both choice fields, since ``best_of`` completions are generated, ``n`` returned."""
    largest = None
    for field in fields:
        value = payload.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{field}' must be a positive integer.", param=field)
        if value > most:
            raise BadRequest(f"'{field}' must be at most {most}.", param=field)
        largest = value if largest is None else max(largest, value)
    return largest


def set_output_cap(ctx: RequestContext, tokens: int) -> None:
    """Lower the answer's cap to ``tokens``: every token field the request names that
    is above it, or, when it names none, the cap forward adds (``ctx.output_cap``)."""
    # Parse leaves max_tokens None only when no field is named; output_cap is only set
    # when none is: either way the request has no token field to lower.
    if ctx.max_tokens is None or ctx.output_cap is not None:
        ctx.output_cap = tokens
    else:
        for field in TOKEN_FIELDS:
            value = ctx.payload.get(field)
            if value is not None and value > tokens:
                ctx.payload[field] = tokens
                ctx.payload_changed = True
    ctx.max_tokens = tokens


def _apply_alias(ctx: RequestContext, payload: dict[str, Any]) -> None:
    """A route alias (``/v1/gpt4``): its model replaces the client's, or fills in a
    missing one; the plan still decides whether it is allowed."""
    current = payload.get("model")
    if (ctx.endpoint.force_model or not current) and current != ctx.endpoint.model:
        payload["model"] = ctx.endpoint.model
        ctx.payload_changed = True


class Parse:
    name = "parse"

    def __init__(self, policy: PolicySource) -> None:
        self._policy = policy

    async def __call__(self, ctx: RequestContext) -> None:
        ctx.body = await read_body(ctx, self._policy.snapshot.policy.server.max_body_bytes)
        try:
            payload = orjson.loads(ctx.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"The request body is not valid JSON: {exc.msg}.") from None
        if not isinstance(payload, dict):
            raise BadRequest("The request body must be a JSON object.")
        if ctx.endpoint.model is not None:
            _apply_alias(ctx, payload)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("You must provide a model parameter.", param="model")
        ctx.payload = payload
        ctx.model = model
        ctx.stream = payload.get("stream") is True
        ctx.max_tokens = _largest(payload, TOKEN_FIELDS, MAX_OUTPUT_TOKENS)
        if "n" in payload or "best_of" in payload:  # rare: no call for the others
            ctx.choices = _largest(payload, CHOICE_FIELDS, MAX_CHOICES) or 1
