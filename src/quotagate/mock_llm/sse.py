"""Server-sent events framing as OpenAI streams it."""

from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"


def sse_event(payload: object) -> bytes:
    """One ``data:`` event holding ``payload`` as compact JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"
