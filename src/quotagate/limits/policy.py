"""Compile the policy's limit rules into per-request counter checks.

Compilation happens once per policy snapshot; per request only the counter keys are
built. Keys are hash-tagged by tenant (``{t:<id>}``) so that a Redis Cluster keeps one
tenant's counters in one slot; scopes that cross tenants (global, ip, model, a header)
are tagged by their own values and decided first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quotagate.config.schema import LimitRule
from quotagate.store.base import Check, LeaseCheck, RateCheck

_TENANT_SCOPES = frozenset({"tenant", "key", "user"})


@dataclass(slots=True, frozen=True)
class ScopeValues:
    """What counters can be keyed by, for one request."""

    tenant: str
    key: str
    user: str
    ip: str
    model: str
    route: str
    headers: Sequence[tuple[bytes, bytes]] = ()

    def get(self, scope: str) -> str:
        if scope == "global":
            return ""
        if scope.startswith("header:"):
            wanted = scope[7:].lower().encode()
            value = next((v for k, v in self.headers if k == wanted), b"")
            return value.decode("latin-1")[:100].replace(":", "_")
        return str(getattr(self, scope))


@dataclass(slots=True, frozen=True)
class CompiledLimit:
    name: str  # policy name in RateLimit-Policy, e.g. "free.key-requests-1m"
    scopes: tuple[str, ...]
    unit: str  # "requests" or "concurrent"
    amount: int
    window: float  # seconds; 0 for concurrency limits
    interval: float
    capacity: int
    on_store_error: str
    lease_ttl: float
    policy_item: str  # this limit's RateLimit-Policy list member, built once
    tenant_tagged: bool

    def counter_key(self, values: ScopeValues) -> str:
        parts = ":".join(values.get(s) for s in self.scopes)
        tag = f"{{t:{values.tenant}}}" if self.tenant_tagged else f"{{{parts}}}"
        return f"rl:{tag}:{self.name}:{parts}"

    def check(self, values: ScopeValues, lease_id: str, cost: int = 1) -> Check:
        key = self.counter_key(values)
        if self.unit == "concurrent":
            return LeaseCheck(key, self.amount, lease_id, self.lease_ttl)
        return RateCheck(key, self.interval, self.capacity, cost)


def window_label(seconds: float) -> str:
    """``60`` → ``1m``, ``90`` → ``90s``, ``86400`` → ``1d``: the largest exact unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def compile_limit(rule: LimitRule, prefix: str = "") -> CompiledLimit:
    scopes = rule.scopes
    tagged = bool(_TENANT_SCOPES.intersection(scopes))
    scope_name = "+".join(s.replace(":", "=") for s in scopes)
    if rule.concurrent is not None:
        name = f"{prefix}{scope_name}-concurrent"
        item = f'"{name}";q={rule.concurrent};qu="concurrent-requests"'
        return CompiledLimit(
            name, scopes, "concurrent", rule.concurrent, 0.0, 0.0, rule.concurrent,
            rule.on_store_error, rule.lease_ttl, item, tagged,
        )  # fmt: skip
    amount = rule.requests or 0
    window = rule.per or 0.0
    name = f"{prefix}{scope_name}-requests-{window_label(window)}"
    item = f'"{name}";q={amount};w={round(window)}'
    return CompiledLimit(
        name, scopes, "requests", amount, window, window / amount, rule.burst or amount,
        rule.on_store_error, rule.lease_ttl, item, tagged,
    )  # fmt: skip


def compile_limits(rules: list[LimitRule], prefix: str = "") -> tuple[CompiledLimit, ...]:
    return tuple(compile_limit(rule, prefix) for rule in rules)
