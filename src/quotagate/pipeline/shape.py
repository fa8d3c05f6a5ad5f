"""``shape``: a slot on the chosen deployment, waiting for one in its admission queue
when it is full (``quotagate.routing.admission``): weighted-fair by the plan's
priority, for at most the traffic class's ``max_wait``. A plan that degrades first
gets a cached answer instead of waiting, when one is kept; a request that cannot wait
gets a cached answer if its plan keeps them, else 503 with Retry-After."""

from __future__ import annotations

import time

from quotagate.errors import Shed
from quotagate.observability.metrics import QUEUE_WAIT_SECONDS
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Answered, PolicySource
from quotagate.routing.cache import ResponseCache
from quotagate.routing.health import CLOSED

BYPASS_PRIORITY = 1000  # an emergency-bypass key goes before every plan


def priority_of(ctx: RequestContext) -> int:
    if ctx.principal is not None and ctx.principal.bypass:
        return BYPASS_PRIORITY
    return int(ctx.plan.priority) if ctx.plan is not None else 0


class Shape:
    name = "shape"

    def __init__(self, policy: PolicySource, cache: ResponseCache | None = None) -> None:
        self._policy = policy
        self._cache = cache

    async def __call__(self, ctx: RequestContext) -> None:
        target = ctx.target
        assert target is not None, "shape runs after route"
        health = target.health
        gate = health.gate
        priority = ctx.priority = priority_of(ctx)
        if health.state is not CLOSED:
            return  # half open (or opened since routing): forward takes a probe or goes on
        if not gate.queued and not gate.full_for(priority):  # the common case: a free slot
            ctx.probe = health.begin()
            ctx.held = target
            return
        plan = ctx.plan
        cache = self._cache
        degrade_first = plan is not None and plan.on_overload == "degrade"
        if degrade_first and cache is not None and await cache.degrade(ctx):
            raise Answered
        queue = self._policy.snapshot.policy.shaping.queue
        batch = ctx.traffic_class == "batch"
        max_wait = queue.max_wait.get("batch" if batch else "interactive", 2.0)
        started = time.perf_counter()
        try:
            ctx.probe = await gate.enter(priority, max_wait, queue.max_length, batch)
        except Shed:
            if cache is not None and await cache.degrade(ctx):
                raise Answered from None
            raise
        QUEUE_WAIT_SECONDS.labels(str(priority)).observe(time.perf_counter() - started)
        ctx.held = target
