"""What this instance knows of each deployment's health: in-flight requests, recent
latency, and its circuit breaker.

The breaker is passive outlier detection: connect errors, timeouts, 5xx and refused
upstream credentials count as failures; ``consecutive_failures`` in a row, or a
failure rate of ``failure_rate`` over at least ``min_requests`` in the last ``window``,
open the circuit. An open deployment gets no traffic for ``open_for``; then it is half
open and lets ``half_open_probes`` requests through at once: a success closes it, a
failure opens it again. An upstream 429 is not a failure but back-pressure: the
deployment is left alone until its ``retry-after`` has passed.

State lives in a registry keyed by (model, deployment) so that a policy reload keeps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from quotagate.config.schema import AdaptiveConfig, BreakerConfig, Reserve
from quotagate.observability.metrics import BREAKER_STATE, BREAKER_TRANSITIONS
from quotagate.routing.adaptive import Samples
from quotagate.routing.admission import Gate
from quotagate.routing.window import SlidingPair

log = logging.getLogger("quotagate.routing")

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
_EWMA = 0.2  # weight of the newest latency sample

Clock = Callable[[], float]


class DeploymentHealth:
    __slots__ = (
        "_announce",
        "_clock",
        "_gauge",
        "config",
        "consecutive",
        "cooling_until",
        "down",
        "gate",
        "generation",
        "in_flight",
        "latency",
        "model",
        "name",
        "opened_at",
        "outcomes",
        "pressure",
        "probes",
        "reason",
        "region",
        "samples",
        "state",
    )

    def __init__(
        self, model: str, name: str, region: str, config: BreakerConfig, clock: Clock
    ) -> None:
        self.model, self.name, self.region = model, name, region
        self.config = config
        self._clock = clock
        self.state = CLOSED
        self.reason = ""
        self.in_flight = 0
        self.probes = 0  # half-open requests in flight
        self.generation = 0  # counts half-open periods: a probe belongs to one of them
        self.latency = 0.0  # EWMA of time to first token (or answer), seconds
        self.consecutive = 0
        self.opened_at = 0.0
        self.cooling_until = 0.0  # an upstream 429's retry-after
        self.down = False  # an active health check failed (routing.health_check)
        self.outcomes = SlidingPair(config.window, clock)  # successes, failures
        self._gauge = BREAKER_STATE.labels(model, name)
        self._gauge.set(0)
        # Called with (model, name) when this instance opens the circuit (shared health).
        self._announce: Callable[[str, str], None] | None = None
        self.gate = Gate(self)  # the concurrency limit and its admission queue
        self.samples = Samples()  # for the adaptive limit (shaping.adaptive)
        self.pressure: float | None = None  # the upstream's own health signal, last read

    def available(self, now: float) -> bool:
        """May a request be sent now (and if half open, is a probe slot free)?"""
        if self.down:
            return False
        if self.state is CLOSED:
            return now >= self.cooling_until
        if self.state is OPEN:
            if now - self.opened_at < self.config.open_for:
                return False
            self._move(HALF_OPEN, "open_for elapsed")
        return self.probes < self.config.half_open_probes

    def sendable(self, now: float) -> bool:
        """May a request that already holds a slot (not as a probe) be sent: the
        circuit closed, no failed health check, no 429 waiting time running."""
        return self.state is CLOSED and not self.down and now >= self.cooling_until

    def begin(self) -> int:
        """A request is sent; returns its probe ticket when the circuit is half open
        (the half-open period it probes for), else 0."""
        self.in_flight += 1
        if self.in_flight > self.samples.peak:
            self.samples.peak = self.in_flight
        if self.state is HALF_OPEN:
            self.probes += 1
            return self.generation
        return 0

    def end(self, probe: int) -> None:
        self.in_flight -= 1
        # A probe of an earlier half-open period is no longer counted in `probes`.
        if probe and probe == self.generation and self.state is HALF_OPEN and self.probes:
            self.probes -= 1
        if self.gate.queued:
            self.gate.hand_off()

    def succeeded(self, latency: float, probe: int = 0) -> None:
        self.latency = (
            latency if not self.latency else self.latency + _EWMA * (latency - self.latency)
        )
        self.consecutive = 0
        self._count(ok=True)
        # Only this half-open period's probe closes the circuit: a request sent before
        # it opened proves nothing about now.
        if self.state is HALF_OPEN and probe and probe == self.generation:
            self._close()

    def failed(self, why: str) -> None:
        self.consecutive += 1
        self._count(ok=False)
        if self.state is HALF_OPEN:
            self._open(f"probe failed: {why}")
            return
        if self.state is OPEN:
            return
        config = self.config
        if self.consecutive >= config.consecutive_failures:
            self._open(f"{self.consecutive} consecutive failures, last: {why}")
            return
        ok, failed = self.outcomes.recent()
        total = ok + failed
        if total >= config.min_requests and failed / total >= config.failure_rate:
            self._open(f"failure rate {failed}/{total} in {config.window:g}s, last: {why}")

    def throttled(self, retry_after: float) -> None:
        """The upstream answered 429: no traffic until ``retry_after`` has passed."""
        self.cooling_until = max(self.cooling_until, self._clock() + retry_after)

    def checked(self, ok: bool) -> None:
        """An active health check's result."""
        if ok == (not self.down):
            return
        self.down = not ok
        if self.down:
            log.warning(
                "deployment %s of %s: health check failed, out of rotation", self.name, self.model
            )
        else:
            log.info(
                "deployment %s of %s: health check passed, back in rotation", self.name, self.model
            )

    def opened_elsewhere(self, reason: str) -> None:
        """Another instance opened this circuit (shared health)."""
        if self.state is CLOSED:
            self._open(reason, announce=False)

    def _open(self, reason: str, announce: bool = True) -> None:
        self.opened_at = self._clock()
        self._move(OPEN, reason)
        if announce and self._announce is not None:
            self._announce(self.model, self.name)

    def _close(self) -> None:
        self.consecutive = 0
        self.outcomes.reset()
        self._move(CLOSED, "probe succeeded")

    def _move(self, state: str, reason: str) -> None:
        if state is self.state:
            return
        level = logging.WARNING if state is OPEN else logging.INFO
        log.log(
            level, "deployment %s of %s: circuit %s -> %s (%s)",
            self.name, self.model, self.state, state, reason,
        )  # fmt: skip
        self.state, self.reason = state, reason
        self.probes = 0
        if state is HALF_OPEN:
            self.generation += 1
        self._gauge.set(_STATE_VALUE[state])
        BREAKER_TRANSITIONS.labels(self.model, self.name, state).inc()

    def _count(self, ok: bool) -> None:
        self.outcomes.add(0 if ok else 1)

    def detail(self) -> dict[str, object]:
        return {
            "region": self.region,
            "circuit": self.state,
            "reason": self.reason or None,
            "in_flight": self.in_flight,
            "limit": self.gate.limit,
            "queued": self.gate.queued,
            "pressure": self.pressure,
            "latency_ms": round(self.latency * 1000, 1),
            "throttled": self.cooling_until > self._clock(),
            "health_check": "failed" if self.down else "ok",
        }


class HealthRegistry:
    """Every deployment's health, kept across policy reloads."""

    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._states: dict[tuple[str, str], DeploymentHealth] = {}
        self.announce: Callable[[str, str], None] | None = None
        self.adaptive: AdaptiveConfig | None = None
        self.reserve: Reserve | None = None  # shaping.queue.reserve

    def limit_for(self, cap: int | None) -> float | None:
        """A deployment's starting concurrency limit: its cap, or adaptive's initial."""
        adaptive = self.adaptive
        if adaptive is None:
            return cap
        ceiling = min(cap, adaptive.max) if cap is not None else adaptive.max
        return float(min(ceiling, max(adaptive.min, adaptive.initial)))  # the cap wins

    def get(self, model: str, name: str, region: str) -> DeploymentHealth:
        health = self._states.get((model, name))
        if health is None:
            health = DeploymentHealth(model, name, region, self.config, self.clock)
            self._states[(model, name)] = health
        health.config, health.region = self.config, region
        health.outcomes.window = self.config.window  # a reload may change it
        reserve = self.reserve
        health.gate.reserved = reserve.slots if reserve is not None else 0
        health.gate.reserved_for = reserve.priority if reserve is not None else 0
        health._announce = self._announcer
        return health

    def _announcer(self, model: str, name: str) -> None:
        if self.announce is not None:
            self.announce(model, name)

    def find(self, model: str, name: str) -> DeploymentHealth | None:
        return self._states.get((model, name))

    def __iter__(self) -> Iterator[DeploymentHealth]:
        return iter(self._states.values())
