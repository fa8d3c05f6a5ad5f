"""The limit stage sends an alert for every threshold a request passes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from quotagate.auth.principal import Principal
from quotagate.budget.thresholds import QuotaAlerts
from quotagate.config.loader import parse_policy
from quotagate.config.snapshot import Snapshot
from quotagate.limits.engine import LimitEngine
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.limit import Limit, scope_values
from quotagate.store.memory import MemoryStore

POLICY = """
models:
  gpt-4: {deployments: [{url: "http://127.0.0.1:9/v1"}]}
plans:
  alerting:
    models: [gpt-4]
    quotas:
      - {scope: tenant, tokens: 1000, per: day, alerts: [0.8, 0.9]}
"""


class Sent:
    """An alert sender that keeps what it is given."""

    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def send(self, alert: Any) -> None:
        self.alerts.append(alert)


def context(snap: Snapshot, max_tokens: int) -> RequestContext:
    endpoint = SimpleNamespace(name="chat.completions", generates=True)
    scope = {"type": "http", "client": ("10.0.0.1", 1), "headers": []}
    ctx = RequestContext(scope, None, None, endpoint)  # type: ignore[arg-type]
    ctx.principal = Principal("t1", "acme", "k1", "u1", "alerting")
    ctx.plan = snap.plans["alerting"]
    ctx.model = "gpt-4"
    ctx.target = snap.catalog["gpt-4"].targets[0]
    ctx.price = ctx.target.prices
    ctx.payload = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    ctx.max_tokens, ctx.record_id = max_tokens, "rec"
    return ctx


async def test_a_request_jumping_past_two_thresholds_alerts_for_each() -> None:
    """Docs (budgets.md, Alerts): the first request that takes a quota past *each* of
    its thresholds sends the alert, once per threshold. A request taking use from 70%
    to 95% passes 0.8 and 0.9: both alerts are due, and no later request will ever
    send the 0.8 one (they used to claim only the highest threshold reached)."""
    snap = Snapshot.compile(parse_policy(POLICY, env={}))
    engine, sent = LimitEngine(MemoryStore()), Sent()
    alerts = QuotaAlerts(engine, sent)  # type: ignore[arg-type]
    limit = Limit(engine, SimpleNamespace(snapshot=snap), alerts)  # type: ignore[arg-type]
    ctx = context(snap, max_tokens=200)
    quota = snap.plans["alerting"].limits_for("gpt-4").limits[-1]
    used = quota.quota_check(scope_values(ctx), 700, ("UTC", 1))  # earlier requests: 70%
    assert (await engine.admit([quota], [used])).allowed
    await limit(ctx)  # ~10 prompt + 200: 70% -> ~91%
    await asyncio.gather(*alerts._tasks)  # the claim-and-send tasks
    await limit(context(snap, max_tokens=20))
    await asyncio.gather(*alerts._tasks)
    assert sorted(a.threshold for a in sent.alerts) == [0.8, 0.9]
