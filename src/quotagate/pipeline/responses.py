"""Writing complete (non-proxied) responses to the ASGI ``send`` channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from quotagate.errors import GatewayError
from quotagate.pipeline.context import Headers, RequestContext

_JSON = (b"content-type", b"application/json")


def error_body(exc: GatewayError) -> bytes:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": exc.error_type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    )


async def send_json(
    ctx: RequestContext, status: int, body: Any, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers: Headers = [
        _JSON,
        (b"content-length", str(len(data)).encode()),
        (b"x-request-id", ctx.request_id.encode()),
        *ctx.response_headers,
        *extra,
    ]
    ctx.status = status
    ctx.response_started = True
    await ctx.send({"type": "http.response.start", "status": status, "headers": headers})
    await ctx.send({"type": "http.response.body", "body": data, "more_body": False})


async def send_error(ctx: RequestContext, exc: GatewayError) -> None:
    ctx.decision = exc.decision
    await send_json(ctx, exc.status, error_body(exc), exc.headers)
