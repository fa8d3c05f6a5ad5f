"""The one callable contract of the request path.

A stage has a ``name`` and is awaited with the request context; it either returns
(the request goes on) or raises a ``GatewayError`` (the runner answers). Stages are
built once at start-up and read the current policy snapshot through ``PolicySource``,
so a reload is one attribute swap.
"""

from __future__ import annotations

from typing import Protocol

from quotagate.config.snapshot import Snapshot
from quotagate.pipeline.context import RequestContext


class Answered(Exception):
    """A stage answered the request itself (a replay): the later stages are skipped."""


class Stage(Protocol):
    name: str

    async def __call__(self, ctx: RequestContext) -> None: ...


class PolicySource(Protocol):
    snapshot: Snapshot
