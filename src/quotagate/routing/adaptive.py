"""Adaptive concurrency (``shaping.adaptive``): each deployment's limit follows its
health, additive increase and multiplicative decrease (AIMD).

Forward records, per answer, the time to first token (streams) and the time per
output token, and per failure (connect error, timeout, 5xx, 429) an error. Every
``interval`` the limit is cut by ``backoff`` when the mean time to first token is above
``target_ttft``, the mean time per output token above ``target_tpot``, the error share
above ``max_error_rate``, or the deployment's own health signal (``health_signal``:
KV-cache or GPU memory use, queue depth) above its ``max``; otherwise it grows by one
while the limit was reached (or requests were waiting). It stays between ``min`` and
the lower of ``max`` and the deployment's ``max_concurrency``. Raw request latency is
not a signal: it grows with output length, not with load.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from quotagate.config.schema import AdaptiveConfig
from quotagate.observability.metrics import CONCURRENCY_LIMIT

if TYPE_CHECKING:
    from quotagate.routing.health import DeploymentHealth

log = logging.getLogger("quotagate.routing")


class Samples:
    """What one deployment did since the last adjustment."""

    __slots__ = ("failed", "peak", "total", "tpot_n", "tpot_sum", "ttft_n", "ttft_sum")

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, in_flight: int) -> None:
        self.ttft_sum = self.tpot_sum = 0.0
        self.ttft_n = self.tpot_n = self.failed = self.total = 0
        self.peak = in_flight

    def answered(self, ttft: float | None, tpot: float | None) -> None:
        self.total += 1
        if ttft is not None:
            self.ttft_sum += ttft
            self.ttft_n += 1
        if tpot is not None:
            self.tpot_sum += tpot
            self.tpot_n += 1

    def failure(self) -> None:
        self.total += 1
        self.failed += 1


def overloaded(samples: Samples, pressure: float | None, limit: float | None,
               config: AdaptiveConfig) -> str | None:  # fmt: skip
    """Why the deployment is under pressure, or None."""
    if samples.total and samples.failed / samples.total > config.max_error_rate:
        return f"error share {samples.failed}/{samples.total}"
    if samples.ttft_n and samples.ttft_sum / samples.ttft_n > config.target_ttft:
        return f"time to first token {samples.ttft_sum / samples.ttft_n:.3f}s"
    if samples.tpot_n and samples.tpot_sum / samples.tpot_n > config.target_tpot:
        return f"time per output token {samples.tpot_sum / samples.tpot_n:.3f}s"
    if pressure is not None and limit is not None and pressure > limit:
        return f"health signal {pressure:g} above {limit:g}"
    return None


def adjust(health: DeploymentHealth, config: AdaptiveConfig, signal_max: float | None) -> None:
    """One AIMD step for ``health``'s deployment."""
    gate, samples = health.gate, health.samples
    current = gate.limit if gate.limit is not None else float(config.initial)
    ceiling = float(min(gate.cap, config.max) if gate.cap is not None else config.max)
    why = overloaded(samples, health.pressure, signal_max, config)
    if why is not None:
        new = max(float(config.min), current * config.backoff)
    elif samples.peak >= current or gate.queued:
        new = current + 1.0
    else:
        new = current
    new = min(new, ceiling)  # max_concurrency is a hard cap, above the adaptive min
    samples.reset(health.in_flight)
    if new == current:
        return
    gate.limit = new
    CONCURRENCY_LIMIT.labels(health.model, health.name).set(new)
    if why is not None:
        log.info(
            "deployment %s of %s: concurrency limit %.1f -> %.1f (%s)",
            health.name, health.model, current, new, why,
        )  # fmt: skip
    else:
        gate.hand_off()  # room for waiters
