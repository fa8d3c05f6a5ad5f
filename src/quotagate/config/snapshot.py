"""A validated policy compiled for the request path, swapped atomically on reload."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quotagate.budget.estimate import Estimator, estimator_of
from quotagate.budget.feedback import QuotaGroup, quota_groups
from quotagate.config.schema import Plan, Policy
from quotagate.limits.headers import policy_header
from quotagate.limits.policy import CompiledLimit, compile_limit, compile_limits
from quotagate.limits.quotas import compile_quota
from quotagate.routing.catalog import ModelRoute, build_catalog
from quotagate.routing.health import HealthRegistry
from quotagate.store.base import Adjustable, Check


@dataclass(slots=True, frozen=True)
class LimitSet:
    """What applies to one plan and model, in store-call order: rates, then quotas."""

    limits: tuple[CompiledLimit, ...]
    rates: int  # the first `rates` entries are rate limits (the RateLimit headers)
    policy_header: bytes
    has_leases: bool
    metered: bool  # some counter is in tokens or money: reserve, then settle
    has_quotas: bool
    # The counters settlement adjusts (tokens or money, not a sliding window's log),
    # by position, and their units: worked out once per plan, not once per request.
    settled: tuple[int, ...]
    settled_units: tuple[str, ...]
    # The quotas' positions (after the rates) by unit, for their response headers.
    quota_groups: tuple[QuotaGroup, ...]
    alerted: tuple[int, ...]  # positions of the quotas with alert thresholds
    token_rates: tuple[int, ...]  # positions of the rate limits in tokens (TPM)

    @classmethod
    def of(cls, rates: tuple[CompiledLimit, ...], quotas: Iterable[CompiledLimit]) -> LimitSet:
        quotas = tuple(quotas)
        limits = rates + quotas
        settled = tuple(
            i
            for i, limit in enumerate(limits)
            if limit.unit in ("tokens", "micros") and limit.algorithm != "sliding_window"
        )
        return cls(
            limits,
            len(rates),
            policy_header(rates),
            any(limit.unit == "concurrent" for limit in limits),
            any(limit.unit in ("tokens", "micros") for limit in limits),
            len(limits) > len(rates),
            settled,
            tuple(limits[i].unit for i in settled),
            quota_groups(quotas, len(rates)),
            tuple(i for i, limit in enumerate(quotas, len(rates)) if limit.alerts),
            tuple(i for i, limit in enumerate(rates) if limit.unit == "tokens"),
        )

    def settled_checks(self, checks: Sequence[Check]) -> list[Adjustable]:
        """A request's checks (in this set's order) that settlement adjusts."""
        return [checks[i] for i in self.settled]  # type: ignore[misc]


@dataclass(slots=True, frozen=True)
class CompiledPlan:
    name: str
    models: frozenset[str] | None  # None: every model in the catalog
    max_tokens: int | None
    reject_over_max: bool
    default_max_tokens: int
    clamp_min_tokens: int
    currency: str
    by_model: dict[str, LimitSet]
    default: LimitSet  # for a model with no quota of its own
    fallbacks: dict[str, tuple[str, ...]]  # the plan's own chains, replacing the models'
    cache: str  # always | degrade | off
    priority: int
    on_overload: str  # queue | degrade
    # The same for batch traffic (x-quotagate-class: batch), when some limit is only
    # for one class; else the very same objects.
    batch_by_model: dict[str, LimitSet]
    batch_default: LimitSet

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def limits_for(self, model: str, batch: bool = False) -> LimitSet:
        if batch:
            return self.batch_by_model.get(model, self.batch_default)
        return self.by_model.get(model, self.default)

    @property
    def all_limits(self) -> tuple[CompiledLimit, ...]:
        sets = (self.default, *self.by_model.values(), self.batch_default)
        seen = {
            limit.name: limit for s in (*sets, *self.batch_by_model.values()) for limit in s.limits
        }
        return tuple(seen.values())


def _compile_plan(
    name: str, plan: Plan, global_limits: tuple[CompiledLimit, ...], models: Iterable[str]
) -> CompiledPlan:
    # A limit for some traffic classes only counts on counters of its own (the classes
    # are in its name), and applies to requests of those classes.
    compiled = [
        compile_limit(
            rule, f"{name}." + (f"{'+'.join(sorted(rule.classes))}." if rule.classes else "")
        )
        for rule in plan.limits
    ]

    def rates_of(traffic_class: str) -> tuple[CompiledLimit, ...]:
        return global_limits + tuple(
            limit for limit, rule in zip(compiled, plan.limits, strict=True)
            if not rule.classes or traffic_class in rule.classes
        )  # fmt: skip

    quotas = [compile_quota(q, f"{name}.") for q in plan.quotas]
    if plan.budget is not None:
        quotas.append(compile_quota(plan.budget.as_quota(), f"{name}.", budget=True))

    def sets(rates: tuple[CompiledLimit, ...]) -> tuple[dict[str, LimitSet], LimitSet]:
        by_model = {
            model: LimitSet.of(rates, (q for q in quotas if q.model in (None, model)))
            for model in models
        }
        return by_model, LimitSet.of(rates, (q for q in quotas if q.model is None))

    interactive, batch = rates_of("interactive"), rates_of("batch")
    by_model, default = sets(interactive)
    batch_sets = (by_model, default) if batch == interactive else sets(batch)
    return CompiledPlan(
        name,
        None if "*" in plan.models else frozenset(plan.models),
        plan.max_tokens,
        plan.max_tokens_policy == "reject",
        plan.default_max_tokens,
        plan.clamp_min_tokens,
        plan.budget.currency if plan.budget else "USD",
        by_model,
        default,
        {model: tuple(chain) for model, chain in plan.fallbacks.items()},
        plan.cache,
        plan.priority,
        plan.on_overload,
        batch_sets[0],
        batch_sets[1],
    )


@dataclass(slots=True, frozen=True)
class Snapshot:
    policy: Policy
    plans: dict[str, CompiledPlan]
    catalog: dict[str, ModelRoute]
    # Some limit refuses (503) without its store: then the store is needed to be ready.
    store_required: bool
    estimator: Estimator

    @classmethod
    def compile(cls, policy: Policy, health: HealthRegistry | None = None) -> Snapshot:
        """``health``: the deployments' health records to keep (a reload passes the
        running gateway's), else new ones."""
        if health is None:
            health = HealthRegistry(policy.routing.breaker)
        health.config = policy.routing.breaker
        health.adaptive = policy.shaping.adaptive
        health.reserve = policy.shaping.queue.reserve
        global_limits = compile_limits(policy.global_limits, prefix="global.")
        plans = {
            n: _compile_plan(n, p, global_limits, policy.models) for n, p in policy.plans.items()
        }
        required = any(
            limit.on_store_error == "closed" for plan in plans.values() for limit in plan.all_limits
        )
        return cls(
            policy, plans, build_catalog(policy.models, health), required, estimator_of(policy)
        )
