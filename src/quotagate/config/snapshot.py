"""A validated policy compiled for the request path, swapped atomically on reload."""

from __future__ import annotations

from dataclasses import dataclass

from quotagate.config.schema import Plan, Policy
from quotagate.limits.headers import policy_header
from quotagate.limits.policy import CompiledLimit, compile_limits
from quotagate.routing.catalog import ModelRoute, build_catalog


@dataclass(slots=True, frozen=True)
class CompiledPlan:
    name: str
    models: frozenset[str] | None  # None: every model in the catalog
    max_tokens: int | None
    reject_over_max: bool
    limits: tuple[CompiledLimit, ...]  # global limits first, then the plan's own
    policy_header: bytes
    has_leases: bool
    has_tokens: bool
    default_max_tokens: int

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def _compile_plan(name: str, plan: Plan, global_limits: tuple[CompiledLimit, ...]) -> CompiledPlan:
    limits = global_limits + compile_limits(plan.limits, prefix=f"{name}.")
    models = None if "*" in plan.models else frozenset(plan.models)
    return CompiledPlan(
        name,
        models,
        plan.max_tokens,
        plan.max_tokens_policy == "reject",
        limits,
        policy_header(limits),
        any(limit.unit == "concurrent" for limit in limits),
        any(limit.unit == "tokens" for limit in limits),
        plan.default_max_tokens,
    )


@dataclass(slots=True, frozen=True)
class Snapshot:
    policy: Policy
    plans: dict[str, CompiledPlan]
    catalog: dict[str, ModelRoute]
    # Some limit refuses (503) without its store: then the store is needed to be ready.
    store_required: bool

    @classmethod
    def compile(cls, policy: Policy) -> Snapshot:
        global_limits = compile_limits(policy.global_limits, prefix="global.")
        plans = {n: _compile_plan(n, p, global_limits) for n, p in policy.plans.items()}
        required = any(
            limit.on_store_error == "closed" for plan in plans.values() for limit in plan.limits
        )
        return cls(policy, plans, build_catalog(policy.models), required)
