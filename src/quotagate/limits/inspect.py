"""Read the live counters of a tenant (or one key) from a Redis store.

Counters are found by their tenant hash tag, matched to the limit that wrote them by
name, and read on the Redis server's clock, so what is shown is what the next
request would be decided against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from quotagate.config.snapshot import Snapshot
from quotagate.limits.policy import CompiledLimit


@dataclass(slots=True, frozen=True)
class CounterState:
    key: str
    limit: str
    algorithm: str
    amount: int
    used: int
    remaining: int
    resets_in: float  # seconds until the counter is back to full


def limits_by_name(snapshot: Snapshot) -> dict[str, CompiledLimit]:
    return {limit.name: limit for plan in snapshot.plans.values() for limit in plan.all_limits}


def _name_of(key: str, prefix: str) -> str:
    # <prefix>rl:{t:<tenant>}:<limit name>:<scope values>
    rest = key[len(prefix) :].split("}:", 1)[-1]
    return rest.split(":", 1)[0]


async def _server_now(client: Redis | RedisCluster) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1_000_000


async def _state(
    client: Redis | RedisCluster, key: str, limit: CompiledLimit, now: float
) -> CounterState:
    if limit.algorithm == "gcra":
        raw = await client.get(key)
        tat = float(raw) / 1_000_000 if raw else now
        held = max(0.0, tat - now)
        remaining = max(0, min(limit.capacity, math.floor((limit.capacity * limit.interval - held)
                                                          / limit.interval)))  # fmt: skip
        used = limit.capacity - remaining
        return CounterState(key, limit.name, "gcra", limit.capacity, used, remaining, held)
    if limit.algorithm == "sliding_window":
        low = (now - limit.window) * 1_000_000
        used = int(await client.zcount(key, f"({low}", "+inf"))
        newest = await client.zrange(key, -1, -1, withscores=True)
        resets = (float(newest[0][1]) / 1_000_000 + limit.window - now) if newest else 0.0
        return CounterState(
            key, limit.name, "sliding_window", limit.amount, used, max(0, limit.amount - used),
            max(0.0, resets),
        )  # fmt: skip
    used = int(await client.zcount(key, f"({now * 1_000_000}", "+inf"))
    return CounterState(
        key, limit.name, "concurrent", limit.amount, used, max(0, limit.amount - used), 0.0
    )


async def inspect_tenant(
    client: Redis | RedisCluster,
    prefix: str,
    tenant_id: str,
    snapshot: Snapshot,
    key_id: str | None = None,
) -> list[CounterState]:
    """Every live counter of ``tenant_id`` (only ``key_id``'s when given)."""
    known = limits_by_name(snapshot)
    pattern = f"{prefix}*{{t:{tenant_id}}}*"
    keys: Iterable[bytes] = [k async for k in client.scan_iter(match=pattern, count=1000)]
    now = await _server_now(client)
    states = []
    for raw in sorted(keys):
        key = raw.decode()
        limit = known.get(_name_of(key, prefix))
        if limit is None or (key_id is not None and not _is_key_counter(key, limit, key_id)):
            continue
        states.append(await _state(client, key, limit, now))
    return states


def _is_key_counter(key: str, limit: CompiledLimit, key_id: str) -> bool:
    return "key" in limit.scopes and key_id in key.rsplit(":", len(limit.scopes))[1:]
