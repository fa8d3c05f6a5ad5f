"""Per-request directives written in the prompt, e.g. ``[[mock:error=503]]``.

The gateway forwards bodies unchanged, so a test drives the mock's behaviour end to
end by writing these into a message:

    [[mock:tokens=N]]        answer exactly N completion tokens (max_tokens still caps)
    [[mock:hang]]            never answer; the request ends when the client goes away
    [[mock:error=STATUS]]    answer STATUS with an OpenAI-shaped error body
    [[mock:retry-after=S]]   add ``retry-after: S`` to the error (429 unless error= given)
    [[mock:drop]]            cut the stream (or the body) part-way
    [[mock:ttft=MS]]         wait MS milliseconds before the first token
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import InvalidRequest

_MARKER = "[[mock:"
_DIRECTIVE = re.compile(r"\[\[mock:([a-z-]+)(?:=([^\]]*))?\]\]")


@dataclass(slots=True, frozen=True)
class Directives:
    """What the prompt asked of the mock; ``None`` means "not asked"."""

    tokens: int | None = None
    hang: bool = False
    drop: bool = False
    error_status: int | None = None
    retry_after: str | None = None
    ttft_ms: float | None = None


NO_DIRECTIVES = Directives()


def parse_directives(text: str) -> Directives:
    """The directives found in ``text``; a malformed one is a 400 so tests fail loudly."""
    if _MARKER not in text:  # the common case costs one substring search
        return NO_DIRECTIVES
    found = NO_DIRECTIVES
    for match in _DIRECTIVE.finditer(text):
        found = _apply(found, match.group(1), match.group(2))
    if found.retry_after is not None and found.error_status is None:
        found = replace(found, error_status=429)
    return found


def _apply(found: Directives, name: str, value: str | None) -> Directives:
    if name == "hang":
        return replace(found, hang=True)
    if name == "drop":
        return replace(found, drop=True)
    if name == "tokens":
        return replace(found, tokens=_int_value(name, value, low=0))
    if name == "error":
        return replace(found, error_status=_int_value(name, value, low=400, high=599))
    if name == "retry-after":
        return replace(found, retry_after=str(_int_value(name, value, low=0)))
    if name == "ttft":
        return replace(found, ttft_ms=float(_int_value(name, value, low=0)))
    raise InvalidRequest(f"unknown mock directive {name!r}")


def _int_value(name: str, value: str | None, *, low: int, high: int | None = None) -> int:
    try:
        number = int(value or "")
    except ValueError:
        raise InvalidRequest(f"mock directive {name!r} needs an integer value") from None
    if number < low or (high is not None and number > high):
        raise InvalidRequest(f"mock directive {name!r} is out of range: {number}")
    return number
