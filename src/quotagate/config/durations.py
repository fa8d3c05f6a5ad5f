"""Durations as written in policy files (``500ms``, ``10s``, ``1m``, ``1h``, ``1d``)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds or a string such as ``1m``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}")
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be positive")
    return seconds


def format_go_duration(seconds: float) -> str:
    """``seconds`` as OpenAI writes resets: ``1s``, ``6m0s``, ``1h2m3s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = int(seconds + 0.999)  # a reset is never earlier than said
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]

CALENDAR_PERIODS = ("day", "week", "month")


def parse_per(value: object) -> float | str:
    """A limit's window: a duration, or a calendar period (``day``, ``week``, ``month``)."""
    if isinstance(value, str) and value.strip() in CALENDAR_PERIODS:
        return value.strip()
    return parse_duration(value)


Per = Annotated[float | str, BeforeValidator(parse_per)]
