"""Compile the policy's limit rules into per-request counter checks.

Compilation happens once per policy snapshot; per request only the counter keys are
built. Keys are hash-tagged by tenant (``{t:<id>}``) so that a Redis Cluster keeps one
tenant's counters in one slot; scopes that cross tenants (global, ip) are not tagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quotagate.config.schema import LimitRule
from quotagate.store.base import RateCheck


@dataclass(slots=True, frozen=True)
class ScopeValues:
    """What counters can be keyed by, for one request."""

    tenant: str
    key: str
    user: str
    ip: str
    model: str
    route: str

    def get(self, scope: str) -> str:
        return "" if scope == "global" else str(getattr(self, scope))


@dataclass(slots=True, frozen=True)
class CompiledLimit:
    name: str  # policy name in RateLimit-Policy, e.g. "key-requests-1m"
    scopes: tuple[str, ...]
    unit: str  # "requests"
    amount: int
    window: float
    interval: float
    capacity: int
    policy_item: str  # this limit's RateLimit-Policy list member, built once

    def counter_key(self, values: ScopeValues) -> str:
        parts = ":".join(values.get(s) for s in self.scopes)
        tag = f"{{t:{values.tenant}}}:" if "tenant" in self.scopes or "key" in self.scopes else ""
        return f"qg:rl:{tag}{self.name}:{parts}"

    def check(self, values: ScopeValues, cost: int = 1) -> RateCheck:
        return RateCheck(self.counter_key(values), self.interval, self.capacity, cost)


def _window_label(seconds: float) -> str:
    """``60`` → ``1m``, ``90`` → ``90s``, ``86400`` → ``1d``: the largest exact unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def compile_limit(rule: LimitRule, prefix: str = "") -> CompiledLimit:
    amount = rule.requests or 0
    scopes = rule.scopes
    name = f"{prefix}{'+'.join(scopes)}-requests-{_window_label(rule.per)}"
    capacity = rule.burst or amount
    item = f'"{name}";q={amount};w={round(rule.per)}'
    return CompiledLimit(
        name, scopes, "requests", amount, rule.per, rule.per / amount, capacity, item
    )


def compile_limits(rules: list[LimitRule], prefix: str = "") -> tuple[CompiledLimit, ...]:
    return tuple(compile_limit(rule, prefix) for rule in rules)


KeyBuilder = Callable[[ScopeValues], list[RateCheck]]
