"""Background work on the deployments' health.

- Active health checks (``routing.health_check``): every ``interval`` each deployment
  gets ``GET <url><path>``; a failure (no answer within ``timeout``, or not 2xx) takes
  it out of rotation until a check passes again, whatever its circuit says.
- Adaptive concurrency (``shaping.adaptive``): every ``interval`` the deployments'
  health signals are read and each limit takes one AIMD step (``routing.adaptive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from quotagate.config.snapshot import Snapshot
from quotagate.observability.metrics import HEALTH_CHECKS
from quotagate.routing.adaptive import adjust
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
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="health-checks"),
            loop.create_task(self._adapt(), name="adaptive-concurrency"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _targets(self) -> list[Target]:
        unique = {
            (t.model, t.name): t for route in self._gateway.snapshot.catalog.values()
            for t in route.targets
        }  # fmt: skip
        return list(unique.values())

    async def _adapt(self) -> None:
        while True:
            config = self._gateway.snapshot.policy.shaping.adaptive
            if config is None:  # off (a reload may turn it on)
                await asyncio.sleep(1.0)
                continue
            try:
                await self.adapt_once(config.interval)
            except Exception:  # a bug here must not freeze every limit silently
                log.exception("adaptive concurrency step failed")
            await asyncio.sleep(config.interval)

    async def adapt_once(self, interval: float) -> None:
        config = self._gateway.snapshot.policy.shaping.adaptive
        if config is None:
            return
        targets = self._targets()
        signals = [t for t in targets if t.signal is not None]
        if signals:
            await asyncio.gather(*(self.read_signal(t, interval) for t in signals))
        for target in targets:
            limit = target.signal.max if target.signal is not None else None
            adjust(target.health, config, limit)

    async def read_signal(self, target: Target, within: float) -> None:
        """The upstream's own load figure (JSON field or Prometheus metric), or None
        when it cannot be read (then it is not a signal)."""
        signal = target.signal
        session = self._gateway.session
        if signal is None or session is None:
            return
        value: float | None = None
        try:
            async with session.get(signal.url, timeout=aiohttp.ClientTimeout(total=within)) as resp:
                text = await resp.text()
                if resp.status == 200:
                    value = (
                        _field(text, signal.field) if signal.field else _metric(text, signal.metric)
                    )
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            value = None
        target.health.pressure = value

    async def _run(self) -> None:
        while True:
            config = self._gateway.snapshot.policy.routing.health_check
            if config is None:  # off (a reload may turn it on): nothing stays out on it
                for target in self._targets():
                    target.health.checked(True)
                await asyncio.sleep(1.0)
                continue
            try:
                await asyncio.gather(
                    *(self.check(t, config.path, config.timeout) for t in self._targets())
                )
            except Exception:  # a bug here must not stop the checks silently
                log.exception("health checks failed")
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


def _field(text: str, path: str) -> float | None:
    """A number at a dotted path of a JSON document."""
    value: Any = orjson.loads(text)
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _metric(text: str, name: str | None) -> float | None:
    """The largest sample of a metric in Prometheus text (one per GPU or engine)."""
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return max(values) if values else None
