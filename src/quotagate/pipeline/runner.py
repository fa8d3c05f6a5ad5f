"""The runner: stages in order, and the one error boundary of the request path.

Gateway errors become OpenAI-shaped responses; anything else is a bug: logged with its
traceback, answered 500 with no internals. Every outcome is counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from quotagate.errors import GatewayError
from quotagate.observability.metrics import ERRORS, request_counter, request_timer
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import ClientDisconnected
from quotagate.pipeline.responses import send_error
from quotagate.pipeline.stage import Stage
from quotagate.store.base import Adjustable, LeaseCheck

log = logging.getLogger("quotagate.requests")


class LimitSettlement(Protocol):
    """What the runner does after the response: give leases back, settle reservations."""

    async def release(self, leases: Sequence[LeaseCheck]) -> None: ...

    async def adjust(self, checks: Sequence[Adjustable], deltas: Sequence[int]) -> None: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage], settle: LimitSettlement | None = None) -> None:
        self.stages = tuple(stages)
        self._settle = settle

    async def run(self, ctx: RequestContext) -> None:
        started = time.perf_counter()
        try:
            for stage in self.stages:
                await stage(ctx)
        except GatewayError as exc:
            await self._refuse(ctx, exc)
        except ClientDisconnected:
            ctx.decision = "client_disconnected"
        except Exception:
            log.exception("unexpected error in request %s", ctx.request_id)
            await self._refuse(ctx, GatewayError("The gateway failed to handle the request."))
        finally:
            if self._settle is not None:
                if ctx.leases:
                    await self._settle.release(ctx.leases)
                if ctx.token_checks:
                    await self._settle_tokens(ctx, self._settle)
            self._observe(ctx, started)

    @staticmethod
    async def _refuse(ctx: RequestContext, exc: GatewayError) -> None:
        ERRORS.labels(type(exc).__name__).inc()
        if exc.status >= 500:
            log.warning("request %s: %s %s", ctx.request_id, exc.status, exc.message)
        elif exc.status in (400, 413):
            log.info("request %s: %s %s", ctx.request_id, exc.status, exc.message)
        else:  # 401/403/404/429 come in floods under attack: keep them out of INFO
            log.debug("request %s: %s %s", ctx.request_id, exc.status, exc.message)
        if ctx.response_started:
            return  # the status has gone out; the stage already ended the stream in-band
        await send_error(ctx, exc)

    @staticmethod
    async def _settle_tokens(ctx: RequestContext, store: LimitSettlement) -> None:
        """Replace the reservation with what was used: the upstream's count; nothing when
        no answer came (an upstream error or a refusal after reserving)."""
        used = ctx.usage_tokens if ctx.usage_tokens is not None else 0
        delta = used - ctx.reserved_tokens
        if delta:
            await store.adjust(ctx.token_checks, [delta] * len(ctx.token_checks))

    @staticmethod
    def _observe(ctx: RequestContext, started: float) -> None:
        endpoint = ctx.endpoint.name
        model = ctx.model if ctx.target is not None else "unknown"
        request_counter(endpoint, model, ctx.status, ctx.decision).inc()
        request_timer(endpoint).observe(time.perf_counter() - started)
