"""What the upstream says a request used: the ``usage`` block of a JSON answer, or the
final usage chunk of an SSE stream.

Streams are asked for usage (``stream_options.include_usage``) when token accounting
needs it; when the client did not ask, that chunk is taken out before the client sees
it. The scanner passes events through whole as they complete, so bytes still reach
the client as the upstream sends them.
"""

from __future__ import annotations

import re
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


# An event ends at a blank line; a line ends at CRLF, LF or CR (the SSE spec). LF only
# is the common framing and takes a faster path; servers built on sse-starlette (e.g.
# llama-cpp-python's) end lines with CRLF.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_TEXT_FIELDS = frozenset({"content", "refusal", "reasoning_content", "reasoning"})


class StreamUsage:
    """Fed the stream's chunks; returns what to pass on, and keeps the usage."""

    def __init__(self, strip_usage_chunk: bool) -> None:
        self._strip = strip_usage_chunk
        self._pending = b""
        self.usage: Usage | None = None
        self.text_chars = 0  # produced output, for streams whose upstream reports nothing

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        if b"\r" not in data:  # LF only: split without the regular expression
            end = data.rfind(b"\n\n")
            if end < 0:
                self._pending = data
                return b""
            complete, self._pending = data[:end], data[end + 2 :]
            return b"".join(self._event(e, b"\n\n") for e in complete.split(b"\n\n"))
        # A CR last may be the first half of a CRLF: wait for what follows it.
        scan = data[:-1] if data.endswith(b"\r") else data
        out, start = [], 0
        for match in _EVENT_END.finditer(scan):
            out.append(self._event(data[start : match.start()], match.group()))
            start = match.end()
        self._pending = data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The stream ended: its last event, even without the blank line that ends one."""
        rest, self._pending = self._pending, b""
        body = rest.rstrip(b"\r\n")
        return self._event(body, rest[len(body) :]) if body.strip() else rest

    def _event(self, body: bytes, end: bytes) -> bytes:
        """One event, ``body`` and the blank line that ends it (``end``), as it is to go
        on: the same bytes, or less (the usage the client did not ask for)."""
        if b"\n" not in body and b"\r" not in body:
            line, lines = body, [body]  # nearly every event: one data line
        else:
            lines = body.splitlines()
            data = [line for line in lines if line.startswith(b"data:")]
            if len(data) != 1:  # a multi-line event: not a JSON chunk of ours
                return body + end
            line = data[0]
        if not line.startswith(b"data:"):  # a comment, an id or event line alone
            return body + end
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return body + end
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return body + end
        if not isinstance(chunk, dict):
            return body + end
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            self.text_chars += _produced_chars(choice)
        reported = chunk.get("usage")  # null on every other chunk (OpenAI)
        if reported is None or (usage := _usage(reported)) is None:
            return body + end
        self.usage = usage  # the last one counts: some upstreams report as they go
        if not self._strip:
            return body + end
        if not choices:
            return b""  # the usage chunk the gateway asked for: the client did not
        # Usage riding on a content chunk (Gemini, vLLM's continuous usage): the chunk
        # goes on without it, in the event's own line endings.
        del chunk["usage"]
        newline = b"\r\n" if end.startswith(b"\r\n") else end[:1] or b"\n"
        rebuilt = [b"data: " + orjson.dumps(chunk) if kept is line else kept for kept in lines]
        return newline.join(rebuilt) + (end or newline * 2)

    @property
    def produced_tokens(self) -> int:
        return chars_to_tokens(self.text_chars)


def _produced_chars(choice: Any) -> int:
    """Characters of output in one streamed choice: text, refusals, reasoning, and the
    name and arguments of tool (and legacy function) calls."""
    if not isinstance(choice, dict):
        return 0
    count = _length(choice.get("text"))  # completions
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return count
    for field, value in delta.items():  # a delta holds a field or two: walk those
        if type(value) is str:
            if field in _TEXT_FIELDS:
                count += len(value)
        elif field == "tool_calls" and isinstance(value, list):
            for call in value:
                if isinstance(call, dict):
                    count += _call_chars(call.get("function"))
        elif field == "function_call":  # the legacy form
            count += _call_chars(value)
    return count


def _call_chars(function: Any) -> int:
    if not isinstance(function, dict):
        return 0
    return _length(function.get("name")) + _length(function.get("arguments"))


def _length(text: Any) -> int:
    return len(text) if isinstance(text, str) else 0
