"""Choosing the deployment that serves a request, and the next one when it fails.

Order of preference: the client's region (from ``routing.region_header``, when the
catalog knows it) or this gateway's, then the regions ``nearest`` to it, then the rest.
Within the first group that has a usable deployment (circuit not open, not throttled by
an upstream 429, below its ``max_concurrency``), a weighted random pick where a weight is
the configured one divided by the requests in flight (+1), and for ``latency`` also by
the deployment's recent time to first token relative to the fastest: at low load the
configured weights hold, under load the least busy (or fastest) deployments get more.

When no deployment of the model is usable the request moves down its fallback chain
(the plan's, else the model's), skipping models the plan does not include.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from quotagate.config.schema import RoutingConfig
from quotagate.errors import NoDeployment
from quotagate.observability.metrics import FALLBACKS
from quotagate.pipeline.context import RequestContext
from quotagate.routing.catalog import ModelRoute, Target
from quotagate.routing.health import OPEN, Clock
from quotagate.routing.pressure import Pressure
from quotagate.routing.window import SlidingPair

_BUDGET_WINDOW = 10.0  # seconds over which the retry budget counts requests and retries


class RetryBudget:
    """Retries allowed: ``ratio`` of recent requests, plus ``min_per_second``."""

    def __init__(self, ratio: float, min_per_second: float, clock: Clock = time.monotonic) -> None:
        self.ratio, self.floor = ratio, min_per_second * _BUDGET_WINDOW
        self._counts = SlidingPair(_BUDGET_WINDOW, clock)  # requests, retries

    def request(self) -> None:
        self._counts.add(0)

    def allow(self) -> bool:
        requests, retries = self._counts.recent()
        if retries + 1 > self.floor + self.ratio * requests:
            return False
        self._counts.add(1)
        return True


class Router:
    def __init__(self, config: RoutingConfig, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.budget = RetryBudget(config.retries.budget, config.retries.min_per_second)
        self.configure(config)
        self.pressure: Pressure | None = None  # limits that follow model health

    def configure(self, config: RoutingConfig) -> None:
        self.config = config
        self._header = config.region_header.encode() if config.region_header else None
        self._latency = config.strategy == "latency"
        self.budget.ratio = config.retries.budget
        self.budget.floor = config.retries.min_per_second * _BUDGET_WINDOW

    def region(self, ctx: RequestContext, route: ModelRoute) -> str | None:
        """The region to serve ``ctx`` from: the client's if it names one of the
        model's, else this gateway's."""
        if self._header is not None and len(route.regions) > 1:
            for name, value in ctx.scope["headers"]:
                if name == self._header:
                    asked: str = value.decode("latin-1").strip()
                    if asked in route.regions:
                        return asked
                    break
        return self.config.region

    def choose(
        self, route: ModelRoute, region: str | None, tried: Sequence[Target] = ()
    ) -> Target | None:
        now = time.monotonic()
        targets = route.targets
        if len(targets) == 1:  # the common case: nothing to weigh
            only = targets[0]
            ok = only not in tried and not only.saturated and only.health.available(now)
            return only if ok else None
        for group in route.tiers(region, self.config.nearest):
            usable = [
                t for t in group
                if t not in tried and not t.saturated and t.health.available(now)
            ]  # fmt: skip
            if usable:
                return usable[0] if len(usable) == 1 else self._weighted(usable)
        return None

    def _weighted(self, usable: list[Target]) -> Target:
        if self._latency:
            fastest = min((t.health.latency for t in usable if t.health.latency), default=0.0)
            weights = [
                t.weight
                / (t.health.in_flight + 1)
                / (t.health.latency / fastest if fastest and t.health.latency else 1.0)
                for t in usable
            ]
        else:
            weights = [t.weight / (t.health.in_flight + 1) for t in usable]
        return self._rng.choices(usable, weights)[0]

    def serve(self, ctx: RequestContext, catalog: dict[str, ModelRoute]) -> Target:
        """The deployment for ``ctx``'s model; when every one is full, the least full
        of them to queue for (or, for a plan that degrades first, a fallback model's
        deployment before that); when none is usable, a fallback model's (switching the
        request to it); ``NoDeployment`` when nothing can take it."""
        route = catalog[ctx.model]
        region = self.region(ctx, route)
        target = self.choose(route, region)
        if target is not None:
            return target
        plan = ctx.plan
        full = self.least_full(route, region)
        if full is not None and (plan is None or plan.on_overload == "queue"):
            return full  # wait for it (shape) rather than leave the model
        why = unusable_reason(route, ())
        for model in self.chain_of(ctx, catalog, route):
            other = catalog[model]
            fallback = self.choose(other, self.region(ctx, other))
            if fallback is not None:
                switch_model(ctx, fallback, why)
                return fallback
        if full is not None:
            return full
        raise NoDeployment(f"No deployment of {ctx.model} can serve the request now.")

    def least_full(self, route: ModelRoute, region: str | None) -> Target | None:
        """The healthy deployment nearest ``region`` with the most room (in flight and
        waiting, per slot of its limit): where a request queues when all are full."""
        now = time.monotonic()
        for group in route.tiers(region, self.config.nearest):
            healthy = [t for t in group if t.health.available(now)]
            if healthy:
                return min(healthy, key=_load)
        return None

    def find(
        self, ctx: RequestContext, catalog: dict[str, ModelRoute], tried: Sequence[Target] = ()
    ) -> Target | None:
        """A usable deployment of ``ctx``'s model not in ``tried``, else of the first
        fallback model that has one; None if there is none (nothing is changed)."""
        route = catalog[ctx.model]
        target = self.choose(route, self.region(ctx, route), tried)
        if target is not None:
            return target
        for model in self.chain_of(ctx, catalog, route):
            other = catalog[model]
            target = self.choose(other, self.region(ctx, other), tried)
            if target is not None:
                return target
        return None

    def chain_of(
        self, ctx: RequestContext, catalog: dict[str, ModelRoute], route: ModelRoute
    ) -> tuple[str, ...]:
        """The fallback models for ``route``: the plan's chain, else the model's, less
        those the caller may not use (not in its plan, or a scope it lacks)."""
        plan = ctx.plan
        chain = plan.fallbacks.get(route.name) if plan is not None else None
        if chain is None:
            chain = route.fallback
        scopes = ctx.principal.scopes if ctx.principal is not None else ()
        return tuple(
            m for m in chain
            if (plan is None or plan.allows(m))
            and (catalog[m].scope is None or catalog[m].scope in scopes)
        )  # fmt: skip


def _load(target: Target) -> float:
    gate = target.health.gate
    return (target.health.in_flight + gate.queued) / (gate.limit or 1.0)


def unusable_reason(route: ModelRoute, tried: Sequence[Target]) -> str:
    """Why no deployment of ``route`` could be chosen: overload (some were only at
    capacity), circuit_open (some circuits are open), else outage (all failed now)."""
    if any(t.saturated for t in route.targets if t not in tried):
        return "overload"
    if any(t.health.state is OPEN for t in route.targets):
        return "circuit_open"
    return "outage"


def switch_model(ctx: RequestContext, target: Target, why: str, quota: str | None = None) -> None:
    """The request is served by ``target``'s model instead: say so (``quota``: the
    exhausted quota that made it), bill at its price; an answer to another model is
    not this request's to cache."""
    FALLBACKS.labels(ctx.model, target.model, why).inc()
    because = f"quota={quota}" if quota is not None else f"reason={why}"
    ctx.response_headers.append(
        (b"x-quotagate-fallback", f"{ctx.model} -> {target.model}; {because}".encode())
    )
    ctx.model = ctx.payload["model"] = target.model
    ctx.payload_changed = True
    ctx.target, ctx.price = target, target.prices
    ctx.cache_key = ""
