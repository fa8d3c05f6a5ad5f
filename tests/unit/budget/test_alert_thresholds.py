"""The limit stage sends an alert for every threshold a request passes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from quotagate.auth.principal import Principal
from quotagate.budget.thresholds import QuotaAlerts
from quotagate.config.loader import parse_policy
from quotagate.config.snapshot import Snapshot
from quotagate.limits.engine import LimitEngine
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.limit import Limit, scope_values
from quotagate.store.memory import MemoryStore

POLICY = """
accounting:
  estimator: heuristic
  exhausted_status: 402
models:
  gpt-3.5-turbo:
    price: {input_per_1m: 0.5, output_per_1m: 1.5}
    deployments: [{url: "http://127.0.0.1:9/v1"}]
  gpt-4:
    price: {input_per_1m: 30, output_per_1m: 60}
    deployments: [{url: "http://127.0.0.1:9/v1"}]
plans:
  alerting:
    models: [gpt-4]
    quotas:
      - {scope: tenant, tokens: 1000, per: day, alerts: [0.8, 0.9]}
"""


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, alert: Any) -> None:
        self.sent.append(alert)


def setup(plan: str) -> tuple[Limit, LimitEngine, Snapshot, QuotaAlerts, FakeSender]:
    snap = Snapshot.compile(parse_policy(POLICY, env={}))
    engine = LimitEngine(MemoryStore())
    sender = FakeSender()
    alerts = QuotaAlerts(engine, sender)  # type: ignore[arg-type]
    return Limit(engine, SimpleNamespace(snapshot=snap), alerts), engine, snap, alerts, sender


def context(snap: Snapshot, plan: str, **payload: Any) -> RequestContext:
    endpoint = SimpleNamespace(name="chat.completions", generates=True)
    scope = {"type": "http", "client": ("10.0.0.1", 1), "headers": []}
    ctx = RequestContext(scope, None, None, endpoint)  # type: ignore[arg-type]
    ctx.principal = Principal("t1", "acme", "k1", "u1", plan)
    ctx.plan = snap.plans[plan]
    ctx.model = "gpt-4"
    ctx.target = snap.catalog["gpt-4"].targets[0]
    ctx.price = ctx.target.prices
    ctx.payload = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], **payload}
    ctx.max_tokens = payload.get("max_tokens")
    ctx.record_id = "rec"
    return ctx


async def use(engine: LimitEngine, snap: Snapshot, plan: str, ctx: RequestContext, n: int) -> None:
    """Charge ``n`` tokens to the plan's (only) quota, as earlier requests would have."""
    limit = snap.plans[plan].limits_for("gpt-4").limits[-1]
    check = limit.quota_check(scope_values(ctx), n, ("UTC", 1))
    assert (await engine.admit([limit], [check])).allowed


@pytest.mark.asyncio
async def test_a_request_jumping_past_two_thresholds_alerts_for_each() -> None:
    """Docs (budgets.md, Alerts): the first request that takes a quota past *each* of
    its thresholds sends the alert, once per threshold. A request taking use from 70%
    to 95% passes 0.8 and 0.9: both alerts are due, and no later request will ever
    send the 0.8 one (they used to claim only the highest threshold reached)."""
    limit, engine, snap, alerts, sender = setup("alerting")
    ctx = context(snap, "alerting", max_tokens=200)
    await use(engine, snap, "alerting", ctx, 700)
    await limit(ctx)  # ~10 prompt + 200: 70% -> ~91%
    await asyncio.gather(*alerts._tasks)  # the claim-and-send tasks
    later = context(snap, "alerting", max_tokens=20)
    await limit(later)
    await asyncio.gather(*alerts._tasks)
    assert sorted(a.threshold for a in sender.sent) == [0.8, 0.9]
