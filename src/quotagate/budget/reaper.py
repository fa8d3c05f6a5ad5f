"""Reap reservations whose gateway died before settling them.

Every instance runs one; the store hands each expired reservation to exactly one of
them, which writes it to the ledger as ``unsettled`` with the reserved amounts. The
counters keep the reservation charged: nothing stays pinned (the record leaves the
store), nothing is silently forgiven (it is charged and recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from quotagate.budget.records import unsettled_record
from quotagate.limits.engine import LimitEngine
from quotagate.observability.metrics import REAPED
from quotagate.pipeline.runner import LedgerSink

log = logging.getLogger(__name__)


def reap_interval(reservation_ttl: float) -> float:
    """A quarter of the TTL, between 0.2 s and 30 s: found within 1.25 TTL at most."""
    return min(30.0, max(0.2, reservation_ttl / 4))


class Reaper:
    def __init__(self, engine: LimitEngine, ledger: LedgerSink | None, interval: float) -> None:
        self._engine = engine
        self._ledger = ledger
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def reap_once(self) -> int:
        members = await self._engine.reap()
        for member in members:
            try:
                record = unsettled_record(member)
            except (ValueError, KeyError, TypeError):
                log.error("unreadable reservation record dropped: %.80s", member)
                continue
            log.warning(
                "reservation of %s was never settled: recorded unsettled", record.request_id
            )
            if self._ledger is not None:
                self._ledger.submit(record)
        REAPED.inc(len(members))
        return len(members)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                while await self.reap_once() >= 1000:  # a backlog: keep going
                    pass
            except Exception:  # the reaper must outlive any one failure
                log.exception("reaping failed")
