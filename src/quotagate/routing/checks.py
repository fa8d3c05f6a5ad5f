"""Active health checks (``routing.health_check``): every ``interval`` each deployment
gets ``GET <url><path>``; a failure (no answer within ``timeout``, or not 2xx) takes it
out of rotation until a check passes again, whatever its circuit says. Off when the
policy has no ``health_check``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import aiohttp

from quotagate.config.snapshot import Snapshot
from quotagate.observability.metrics import HEALTH_CHECKS
from quotagate.routing.catalog import Target
from quotagate.routing.health import HealthRegistry

log = logging.getLogger("quotagate.routing")


class GatewaySource(Protocol):
    snapshot: Snapshot
    session: aiohttp.ClientSession | None


class HealthChecks:
    def __init__(self, gateway: GatewaySource, health: HealthRegistry) -> None:
        self._gateway = gateway
        self._health = health
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            config = self._gateway.snapshot.policy.routing.health_check
            if config is None:  # off (a reload may turn it on)
                await asyncio.sleep(5.0)
                continue
            targets = {
                (t.model, t.name): t
                for route in self._gateway.snapshot.catalog.values()
                for t in route.targets
            }
            await asyncio.gather(
                *(self.check(t, config.path, config.timeout) for t in targets.values())
            )
            await asyncio.sleep(config.interval)

    async def check(self, target: Target, path: str, within: float) -> bool:
        session = self._gateway.session
        if session is None:
            return False
        headers = dict(target.headers)
        ok = False
        try:
            async with session.get(
                target.base_url + path,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=within),
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        HEALTH_CHECKS.labels(target.model, target.name, "ok" if ok else "failed").inc()
        target.health.checked(ok)
        return ok
