"""Compile a plan's ``quotas:`` and ``budget:`` into calendar counters.

A quota is a counter per calendar period like a calendar limit, with three differences:
its period follows the tenant (time zone, billing day), exhausting it answers 402
``insufficient_quota`` (or the plan's degrade action), and money is counted in integer
micro-units of the currency.
"""

from __future__ import annotations

from quotagate.config.schema import Fallback, QuotaRule
from quotagate.limits.policy import _TENANT_SCOPES, CompiledLimit, _safe

MICROS = 1_000_000  # micro-units per unit of currency


def to_micros(amount: float) -> int:
    return round(amount * MICROS)


def compile_quota(rule: QuotaRule, prefix: str, budget: bool = False) -> CompiledLimit:
    unit = "tokens" if rule.tokens else "requests" if rule.requests else "micros"
    amount = rule.tokens or rule.requests or to_micros(rule.cost or 0.0)
    scopes = rule.scopes
    if budget:
        name = f"{prefix}budget-{rule.per}"
    else:
        name = f"{prefix}{'+'.join(scopes)}-{unit}-{rule.per}"
        name += f"-{_safe(rule.model)}" if rule.model else ""
    action = rule.on_exhausted
    fallback = action.fallback if isinstance(action, Fallback) else None
    resource = "budget" if budget else None
    if unit == "tokens" and scopes == ("tenant",):
        resource = "tokens"
    return CompiledLimit(
        name, scopes, unit, "calendar", amount, 0.0, 0.0, amount, rule.on_store_error,
        0.0, "", bool(_TENANT_SCOPES.intersection(scopes)), None, "quota", rule.model,
        rule.per, tuple(sorted(rule.alerts)), "fallback" if fallback else str(action),
        fallback, resource,
    )  # fmt: skip
