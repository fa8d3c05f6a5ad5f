"""Limits that follow model health (``shaping.pressure``).

Every instance keeps the times to first token it saw in the last ``window``; once a
second it works out their 95th percentile. Above ``ttft_p95_above`` the instance is
under pressure, and says so in the shared store (a key that expires after ``window``),
so that every instance sharing the store scales the same plans' rate limits by their
``scale`` (a factor below 1) until the key has expired everywhere. The factor shows in
``x-quotagate-limit-factor`` on limited responses and in
``quotagate_limit_health_factor{plan}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from quotagate.config.schema import PressureConfig
from quotagate.limits.engine import LimitEngine
from quotagate.observability.metrics import HEALTH_FACTOR
from quotagate.store.base import StoreUnavailable

log = logging.getLogger("quotagate.routing")
KEY = "pressure:ttft"
_MAX_SAMPLES = 4096


class Pressure:
    def __init__(self, engine: LimitEngine) -> None:
        self._engine = engine
        self._samples: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)
        self.config: PressureConfig | None = None
        self.active = False  # this instance or another one is under pressure
        self.p95 = 0.0
        self._task: asyncio.Task[None] | None = None

    def observe(self, ttft: float) -> None:
        if self.config is not None:
            self._samples.append((time.monotonic(), ttft))

    def factor(self, plan: str) -> float:
        if not self.active or self.config is None:
            return 1.0
        return self.config.scale.get(plan, 1.0)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pressure")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.update()

    async def update(self) -> None:
        config = self.config
        if config is None:
            self._set(False)
            return
        now = time.monotonic()
        samples = self._samples
        while samples and samples[0][0] < now - config.window:
            samples.popleft()
        ordered = sorted(t for _, t in samples)
        self.p95 = ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0
        local = self.p95 > config.ttft_p95_above
        shared = False
        try:
            if local:
                await self._engine.put(KEY, f"{self.p95:.3f}".encode(), config.window)
            shared = local or await self._engine.get(KEY) is not None
        except StoreUnavailable:
            shared = local  # without the store each instance goes by what it sees
        self._set(shared)

    def _set(self, active: bool) -> None:
        if active != self.active:
            log.warning(
                "model pressure %s (time to first token p95 %.3fs here): rate limits %s",
                "on" if active else "off", self.p95,
                "scaled down" if active else "back to the plans'",
            )  # fmt: skip
        self.active = active
        for plan, scale in self.config.scale.items() if self.config is not None else ():
            HEALTH_FACTOR.labels(plan).set(scale if active else 1.0)
