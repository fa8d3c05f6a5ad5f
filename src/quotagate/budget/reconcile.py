"""``quotagate ledger reconcile``: ledger totals against the live quota counters.

For each tenant-scoped quota and budget of a tenant, in the tenant's current period:
the counter in the store should equal what the ledger says was charged (settled usage,
plus the reserved amount of unsettled rows) plus what requests in flight hold reserved
(those admitted in this period: one admitted before midnight holds yesterday's counter,
not today's). The difference is the drift: a store that lost writes, a ledger that
lost rows, or requests recorded after the period rolled over. A plan that reserves
nothing (request quotas only) leaves no record of its requests in flight: reconcile
such a tenant when it is idle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis, RedisCluster
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from quotagate.config.snapshot import Snapshot
from quotagate.db.repo import TenantRow
from quotagate.db.schema import ledger
from quotagate.limits.calendar import candidate_periods
from quotagate.limits.policy import CompiledLimit, ScopeValues

_CHARGED = ("ok", "error", "client_disconnected", "unsettled")


@dataclass(slots=True, frozen=True)
class Drift:
    tenant: str
    quota: str
    unit: str
    period_start: str
    counter: int
    ledger: int
    in_flight: int

    @property
    def drift(self) -> int:
        return self.counter - self.ledger - self.in_flight


def _amount(unit: str) -> Any:
    if unit == "micros":
        return func.coalesce(func.sum(ledger.c.cost_micros), 0)
    if unit == "requests":
        return func.count()
    tokens = case(
        (ledger.c.status == "unsettled", ledger.c.reserved_tokens),
        else_=ledger.c.prompt_tokens + ledger.c.completion_tokens,
    )
    return func.coalesce(func.sum(tokens), 0)


async def _ledger_total(
    engine: AsyncEngine, tenant_id: str, limit: CompiledLimit, start: float
) -> int:
    query = select(_amount(limit.unit)).where(
        ledger.c.tenant_id == tenant_id,
        ledger.c.status.in_(_CHARGED),
        ledger.c.created_at >= datetime.fromtimestamp(start, UTC),
    )
    if limit.model is not None:
        query = query.where(ledger.c.model == limit.model)
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def _in_flight(client: Redis | RedisCluster, prefix: str, tenant_id: str) -> list[Any]:
    members = await client.zrange(f"{prefix}rs:{{t:{tenant_id}}}", 0, -1)
    return [orjson.loads(m) for m in members if isinstance(m, bytes | str)]


async def reconcile_tenant(
    engine: AsyncEngine,
    client: Redis | RedisCluster,
    prefix: str,
    snapshot: Snapshot,
    tenant: TenantRow,
) -> list[Drift]:
    plan = snapshot.plans.get(tenant.plan)
    if plan is None:
        return []
    now = time.time()
    held = await _in_flight(client, prefix, tenant.id)
    drifts = []
    for limit in plan.all_limits:
        if limit.kind != "quota" or limit.scopes != ("tenant",) or limit.period is None:
            continue
        start = candidate_periods(now, limit.period, ZoneInfo(tenant.timezone), tenant.billing_day)[
            0
        ]
        key = prefix + limit.counter_key(ScopeValues(tenant.id, "", "", "", "", ""))
        period, used = await client.hmget(key, ["p", "c"])
        current = period is not None and int(period) == round(start * 1e6)
        counter = int(used) if current and used is not None else 0
        in_flight = sum(
            1
            if limit.unit == "requests"
            else int(r["micros" if limit.unit == "micros" else "tokens"])
            for r in held
            if limit.model in (None, r["model"]) and float(r.get("at", now)) >= start
        )
        charged = await _ledger_total(engine, tenant.id, limit, start)
        began = datetime.fromtimestamp(start, UTC).isoformat()
        drifts.append(
            Drift(tenant.name, limit.name, limit.unit, began, counter, charged, in_flight)
        )
    return drifts
