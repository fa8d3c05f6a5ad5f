"""What the upstream says a request used: the ``usage`` block of a JSON answer, or the
final usage chunk of an SSE stream.

Streams are asked for usage (``stream_options.include_usage``) when token accounting
needs it; when the client did not ask, that chunk is taken out before the client sees
it. The scanner passes events through whole as they complete, so bytes still reach
the client as the upstream sends them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from quotagate.budget.estimate import chars_to_tokens


class Usage(NamedTuple):
    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def _usage(block: Any) -> Usage | None:
    if not isinstance(block, dict):
        return None
    prompt, completion = block.get("prompt_tokens"), block.get("completion_tokens")
    total = block.get("total_tokens")
    if not isinstance(prompt, int):
        if not isinstance(total, int):
            return None
        prompt = total - (completion if isinstance(completion, int) else 0)
    if not isinstance(completion, int):
        completion = total - prompt if isinstance(total, int) else 0
    return Usage(max(0, prompt), max(0, completion))


def usage_of(body: bytes) -> Usage | None:
    """The ``usage`` block of a JSON answer, or None when it has none."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return _usage(answer.get("usage")) if isinstance(answer, dict) else None


class StreamUsage:
    """Fed the stream's chunks; returns what to pass on, and keeps the usage."""

    def __init__(self, strip_usage_chunk: bool) -> None:
        self._strip = strip_usage_chunk
        self._pending = b""
        self.usage: Usage | None = None
        self.text_chars = 0  # for streams whose upstream reports nothing

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: end + 2], data[end + 2 :]
        return b"".join(self._event(e + b"\n\n") for e in complete[:-2].split(b"\n\n"))

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def _event(self, event: bytes) -> bytes:
        payload = event.strip()
        if not payload.startswith(b"data:") or payload.endswith(b"[DONE]"):
            return event
        try:
            chunk = orjson.loads(payload[5:])
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        if chunk.get("usage") and not chunk.get("choices"):
            self.usage = _usage(chunk["usage"])
            return b"" if self._strip else event
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text or choice.get("text") or ""
            self.text_chars += len(text) if isinstance(text, str) else 0
        return event

    @property
    def produced_tokens(self) -> int:
        return chars_to_tokens(self.text_chars)
