"""The runner: stages in order, and the one error boundary of the request path.

Gateway errors become OpenAI-shaped responses; anything else is a bug: logged with its
traceback, answered 500 with no internals. Every outcome is counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from quotagate.budget import settle
from quotagate.budget.ledger import LedgerRecord
from quotagate.budget.records import request_record
from quotagate.errors import GatewayError
from quotagate.observability.metrics import ERRORS
from quotagate.observability.observe import METRICS_ONLY, Observer
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import ClientDisconnected
from quotagate.pipeline.responses import send_error
from quotagate.pipeline.stage import Answered, Stage
from quotagate.store.base import Adjustable, LeaseCheck, ReservationCheck

log = logging.getLogger("quotagate.requests")


class LimitSettlement(Protocol):
    """What the runner does after the response: give leases back, settle reservations."""

    async def release(self, leases: Sequence[LeaseCheck]) -> None: ...

    async def settle(
        self,
        reservation: ReservationCheck,
        checks: Sequence[Adjustable],
        deltas: Sequence[int],
    ) -> bool: ...


class LedgerSink(Protocol):
    def submit(self, record: LedgerRecord) -> None: ...


class Pipeline:
    def __init__(
        self,
        stages: Sequence[Stage],
        settle: LimitSettlement | None = None,
        ledger: LedgerSink | None = None,
        finish: Sequence[Callable[[RequestContext], Awaitable[None]]] = (),
        observer: Observer = METRICS_ONLY,
    ) -> None:
        self.stages = tuple(stages)
        self._settle = settle
        self._ledger = ledger
        self._finish = tuple(finish)
        self._observer = observer

    async def run(self, ctx: RequestContext) -> None:
        started = time.perf_counter()
        ctx.started_at = time.time()
        self._observer.start(ctx)
        try:
            for stage in self.stages:
                await stage(ctx)
        except GatewayError as exc:
            await self._refuse(ctx, exc)
        except ClientDisconnected:
            ctx.decision = "client_disconnected"
        except Answered:
            pass
        except Exception:
            log.exception("unexpected error in request %s", ctx.request_id)
            await self._refuse(ctx, GatewayError("The gateway failed to handle the request."))
        finally:
            ended = time.perf_counter()
            tokens, micros = settle.used(ctx)
            if self._settle is not None:
                if ctx.leases:
                    await self._settle.release(ctx.leases)
                if ctx.reservation is not None:
                    deltas = settle.deltas(ctx, tokens, micros)
                    await self._settle.settle(ctx.reservation, ctx.settle_checks, deltas)
            for finish in self._finish:
                await finish(ctx)
            charged = settle.split(ctx, tokens)
            if self._ledger is not None and ctx.principal is not None:
                self._ledger.submit(request_record(ctx, started, ended, charged, micros))
            self._observer.finish(ctx, started, ended, charged, micros)

    @staticmethod
    async def _refuse(ctx: RequestContext, exc: GatewayError) -> None:
        ERRORS.labels(type(exc).__name__).inc()
        ctx.denial = exc.code
        if exc.status >= 500:
            log.warning("request %s: %s %s", ctx.request_id, exc.status, exc.message)
        elif exc.status in (400, 413):
            log.info("request %s: %s %s", ctx.request_id, exc.status, exc.message)
        else:  # 401/403/404/429 come in floods under attack: keep them out of INFO
            log.debug("request %s: %s %s", ctx.request_id, exc.status, exc.message)
        if ctx.response_started:
            return  # the status has gone out; the stage already ended the stream in-band
        await send_error(ctx, exc)
