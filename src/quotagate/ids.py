"""Cheap unique ids for the request path.

A random per-process prefix and a counter: unique across processes and instances
(48 random bits each) without a ``getrandom`` syscall per request (measured: two of
those were ~1% of the gateway's samples under load). Not secrets: never use these
where unpredictability matters.
"""

from __future__ import annotations

import itertools
import os

_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def new_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):x}"
