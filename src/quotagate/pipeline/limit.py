"""``limit``: every limit, quota and budget that applies, decided in one atomic store call.

Rates refuse with 429; quotas and budgets with 402 ``insufficient_quota`` (or 429 when
the policy says so), unless the quota names a degrade action: ``fallback`` re-decides
the request for a cheaper model, ``clamp`` lowers max_tokens to what is left. Tokens
and money are reserved here and settled by the runner once the answer is known;
concurrency leases taken here are released when the response has ended.
"""

from __future__ import annotations

from collections.abc import Sequence

from quotagate.auth.principal import Principal
from quotagate.budget.credits import RATE_PERMILLE
from quotagate.budget.feedback import crossed, quota_headers, reset_time, warning
from quotagate.budget.pricing import Prices, format_money, output_tokens_for
from quotagate.budget.reserve import larger_than_quota, reservation_record, reserve, too_large
from quotagate.budget.thresholds import QuotaAlerts
from quotagate.config.snapshot import CompiledPlan, LimitSet
from quotagate.errors import BadRequest, QuotaExhausted, RateLimited
from quotagate.ids import new_id
from quotagate.limits.engine import LimitEngine
from quotagate.limits.headers import rate_limit_headers
from quotagate.limits.policy import CompiledLimit, ScopeValues
from quotagate.observability.metrics import LIMIT_BYPASSED, QUOTA_EXHAUSTED
from quotagate.pipeline.context import Headers, RequestContext
from quotagate.pipeline.parse import set_output_cap
from quotagate.pipeline.stage import PolicySource
from quotagate.routing.catalog import Target
from quotagate.routing.router import Router, switch_model
from quotagate.store.base import (
    Admission,
    Check,
    CheckOutcome,
    CounterCheck,
    LeaseCheck,
    RateCheck,
)

_ADJECTIVE = {"day": "daily ", "week": "weekly ", "month": "monthly "}
_MAX_DECISIONS = 3  # a fallback, then a clamp of the fallback, at most


def scope_values(ctx: RequestContext) -> ScopeValues:
    p = ctx.principal
    assert p is not None, "limit runs after authenticate"
    return ScopeValues(
        p.tenant_id, p.key_id, p.user, ctx.client_ip, ctx.model, ctx.endpoint.name,
        ctx.scope["headers"],
    )  # fmt: skip


class Limit:
    name = "limit"

    def __init__(
        self,
        engine: LimitEngine,
        policy: PolicySource,
        alerts: QuotaAlerts | None = None,
        router: Router | None = None,
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._alerts = alerts
        self._router = router or Router(policy.snapshot.policy.routing)

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.stream:
            ask_for_stream_usage(ctx)  # the ledger and settlement read the usage chunk
        if ctx.principal is not None and ctx.principal.bypass:
            LIMIT_BYPASSED.inc()  # an emergency bypass: recorded, never limited
            return
        plan: CompiledPlan = ctx.plan
        # A refusal after a degrade action must not claim it: what to restore.
        mark, origin = len(ctx.response_headers), (ctx.model, ctx.target, ctx.price)
        for _ in range(_MAX_DECISIONS):
            limits = plan.limits_for(ctx.model, ctx.traffic_class == "batch")
            if not limits.limits:  # a fallback on retry may have some: move
                at = len(ctx.response_headers)
                ctx.admitted = (limits, [], (), at, at)
                return
            checks, admission = await self._admit(ctx, plan, limits)
            if admission.allowed:
                self._admitted(ctx, plan, limits, checks, admission)
                return
            denied = limits.limits[admission.denied]
            outcome = admission.outcomes[admission.denied]
            if denied.kind == "rate":
                _undo_degrade(ctx, mark, origin)
                scale = self._scale(plan)
                _rate_headers(
                    ctx.response_headers, limits, admission.outcomes, admission.denied, scale
                )
                raise RateLimited(_refusal(denied))
            if not self._degrade(ctx, plan, denied, outcome):
                _undo_degrade(ctx, mark, origin)
                check = checks[admission.denied]
                assert isinstance(check, CounterCheck)
                if 0 < check.limit < check.cost:  # not used up: this request cannot fit
                    raise _larger_than_quota(denied, check, ctx, plan.currency)
                raise self._exhausted(denied, check, outcome, plan.currency)
        _undo_degrade(ctx, mark, origin)
        raise QuotaExhausted(
            "No plan degrade action could serve this request.",
            code="insufficient_quota",
            status=self._policy.snapshot.policy.accounting.exhausted_status,
        )

    async def _admit(
        self, ctx: RequestContext, plan: CompiledPlan, limits: LimitSet
    ) -> tuple[list[Check], Admission]:
        p = ctx.principal
        assert p is not None and ctx.target is not None
        if limits.metered:
            reserve(ctx, plan.default_max_tokens, self._policy.snapshot.estimator)
            for i in limits.token_rates:
                limit = limits.limits[i]
                if ctx.reserved_tokens > limit.capacity:
                    raise too_large(limit.name, limit.capacity, ctx)
        unique = new_id()  # lease / log entry id: never the client's request id
        values = scope_values(ctx)
        scale = self._scale(plan)
        checks = [_check(limit, values, unique, ctx, p, scale) for limit in limits.limits]
        if limits.metered:
            ttl = self._policy.snapshot.policy.accounting.reservation_ttl
            checks.append(reservation_record(ctx, ttl))
        return checks, await self._engine.admit(limits.limits, checks)

    async def move(self, ctx: RequestContext, target: Target) -> str | None:
        """Count an admitted request against ``target``'s model, which is to serve it in
        place of ``ctx.model`` (a fallback forward takes after the limits): the limits
        that apply to the new model and not the old (its per-model limits and quotas,
        and every limit counted by model) are charged, in one store call, and then the
        old model's are refunded (a lease released; a sliding window's entry stays).
        None when moved; else the name of the new model's limit that refuses the
        request, and nothing has changed. The reservation keeps its amounts (reserved
        at the asked model's price) but is made again naming the new model and its
        deployment (the old one removed), and dropped when the new model meters
        nothing; settlement charges the price of the one that answered. The headers
        admission wrote are written again for the new model's limits."""
        if ctx.admitted is None:  # not limited: an emergency bypass
            return None
        old, old_checks, old_outcomes, start, end = ctx.admitted
        plan: CompiledPlan = ctx.plan
        new = plan.limits_for(target.model, ctx.traffic_class == "batch")
        stays = {limit.name for limit in old.limits if "model" not in limit.scopes}
        gained = [limit for limit in new.limits if limit.name not in stays]
        kept = {limit.name for limit in new.limits} & stays
        lost = [
            c for limit, c in zip(old.limits, old_checks, strict=False) if limit.name not in kept
        ]
        held_reservation = ctx.reservation
        if not gained and not lost and held_reservation is None:
            return None
        p = ctx.principal
        assert p is not None
        estimate = (ctx.prompt_estimate, ctx.reserved_tokens, ctx.reserved_micros)
        ttl = self._policy.snapshot.policy.accounting.reservation_ttl
        reservation = None
        if new.metered:
            if held_reservation is None:  # the asked model had nothing to meter
                reserve(ctx, plan.default_max_tokens, self._policy.snapshot.estimator, target)
            # A reservation naming the fallback, in place of the asked model's: if this
            # gateway dies, the reaped row says who served (the amounts are the same).
            reservation = reservation_record(ctx, ttl, target)
        extra: list[Check] = [reservation] if reservation is not None else []
        too_big = next(
            (limit.name for limit in gained
             if limit.kind == "rate" and limit.unit == "tokens"
             and ctx.reserved_tokens > limit.capacity),
            None,
        )  # fmt: skip
        if too_big is not None:
            ctx.prompt_estimate, ctx.reserved_tokens, ctx.reserved_micros = estimate
            return too_big
        values = scope_values(ctx)._replace(model=target.model)
        unique, scale = new_id(), self._scale(plan)
        checks = [_check(limit, values, unique, ctx, p, scale) for limit in gained]
        got: tuple[CheckOutcome, ...] = ()
        if checks or extra:
            admission = await self._engine.admit(gained, checks + extra)
            if not admission.allowed:
                ctx.prompt_estimate, ctx.reserved_tokens, ctx.reserved_micros = estimate
                return gained[admission.denied].name
            got = admission.outcomes
        if held_reservation is not None:  # replaced (it named the asked model), or unmetered
            await self._engine.settle(held_reservation, (), ())
        await self._engine.release([c for c in lost if isinstance(c, LeaseCheck)])
        refunds = [c for c in lost if isinstance(c, RateCheck | CounterCheck)]
        if refunds:
            await self._engine.adjust(refunds, [-c.cost for c in refunds])
        # The new model's checks in its LimitSet's order: kept ones from the admission.
        held = {limit.name: c for limit, c in zip(old.limits, old_checks, strict=False)}
        held.update(zip((limit.name for limit in gained), checks, strict=True))
        told = dict(zip((limit.name for limit in old.limits), old_outcomes, strict=False))
        told.update(zip((limit.name for limit in gained), got, strict=False))
        now = [held[limit.name] for limit in new.limits]
        outcomes = tuple(told[limit.name] for limit in new.limits)
        # Its headers in place of the asked model's (nothing has been sent yet).
        fresh: Headers = []
        self._headers(fresh, ctx, plan, new, now, outcomes)
        ctx.response_headers[start:end] = fresh
        ctx.admitted = (
            new, [*now, reservation] if reservation is not None else now,
            outcomes, start, start + len(fresh),
        )  # fmt: skip
        ctx.leases = [c for c in now if isinstance(c, LeaseCheck)]
        ctx.reservation = reservation
        ctx.settle_checks = new.settled_checks(now)
        ctx.settle_units = new.settled_units
        return None

    def _scale(self, plan: CompiledPlan) -> float:
        """The factor model pressure puts on this plan's rate limits now (1: none)."""
        pressure = self._router.pressure
        return pressure.factor(plan.name) if pressure is not None else 1.0

    def _admitted(
        self,
        ctx: RequestContext,
        plan: CompiledPlan,
        limits: LimitSet,
        checks: list[Check],
        admission: Admission,
    ) -> None:
        start = len(ctx.response_headers)
        self._headers(ctx.response_headers, ctx, plan, limits, checks, admission.outcomes)
        ctx.admitted = (limits, checks, admission.outcomes, start, len(ctx.response_headers))
        if limits.has_leases:
            ctx.leases = [c for c in checks if isinstance(c, LeaseCheck)]
        if limits.metered:
            ctx.reservation = checks[-1]  # type: ignore[assignment]
            ctx.settle_checks = limits.settled_checks(checks)
            ctx.settle_units = limits.settled_units

    def _headers(
        self,
        into: Headers,
        ctx: RequestContext,
        plan: CompiledPlan,
        limits: LimitSet,
        checks: Sequence[Check],
        outcomes: Sequence[CheckOutcome],
    ) -> None:
        """What an admitted request is told about its limits, appended to ``into``: the
        rate-limit headers, what its quotas leave, a warning per quota past an alert
        threshold (and the alert, sent once per threshold and period)."""
        if limits.rates:
            _rate_headers(into, limits, outcomes, -1, self._scale(plan))
        if not limits.has_quotas:
            return
        into += quota_headers(limits.quota_groups, checks, outcomes)
        for i in limits.alerted:
            limit, check, outcome = limits.limits[i], checks[i], outcomes[i]
            assert isinstance(check, CounterCheck)
            reached = crossed(limit, check, outcome)
            if reached is None:
                continue
            into.append((b"x-quotagate-quota-warning", warning(limit, check, outcome, reached)))
            if self._alerts is not None and ctx.principal is not None:
                self._alerts.reached(ctx.principal, limit, check, outcome, reached, plan.currency)

    def _degrade(
        self, ctx: RequestContext, plan: CompiledPlan, denied: CompiledLimit, outcome: CheckOutcome
    ) -> bool:
        """Apply the quota's degrade action; True when the request should be re-decided."""
        if denied.degrade == "fallback" and denied.fallback and denied.fallback != ctx.model:
            _fall_back(ctx, self._policy, self._router, denied.fallback, denied.name)
            QUOTA_EXHAUSTED.labels("fallback").inc()
            return True
        if denied.degrade != "clamp" or not ctx.endpoint.generates:
            return False
        output_left = (
            outcome.remaining - ctx.prompt_estimate
            if denied.unit == "tokens"
            else output_tokens_for(outcome.remaining, ctx.prompt_estimate, ctx.price)
        )
        # Per choice: the upstream may write max_tokens for each of the n choices.
        left = output_left // ctx.choices
        current = (ctx.reserved_tokens - ctx.prompt_estimate) // ctx.choices
        if left < plan.clamp_min_tokens or left >= current:
            return False
        set_output_cap(ctx, left)
        QUOTA_EXHAUSTED.labels("clamp").inc()
        ctx.response_headers.append(
            (b"x-quotagate-clamped", f"max_tokens={left}; quota={denied.name}".encode())
        )
        return True

    def _exhausted(
        self, limit: CompiledLimit, check: CounterCheck, outcome: CheckOutcome, currency: str
    ) -> QuotaExhausted:
        QUOTA_EXHAUSTED.labels("reject").inc()
        status = self._policy.snapshot.policy.accounting.exhausted_status
        used = check.limit - outcome.remaining
        if limit.unit == "micros":
            what = "budget"
            amounts = (
                f"{format_money(check.limit)} {currency}, used {format_money(used)} {currency}"
            )
        else:
            what = f"{limit.unit} quota"
            amounts = f"{check.limit} {limit.unit}, used {used}"
        resets = reset_time(outcome.reset_after)
        message = (
            f"You exceeded your {_ADJECTIVE.get(limit.period or '', '')}{what} ({limit.name}): "
            f"limit {amounts}. "
            f"It resets at {resets}."
        )
        headers = [(b"x-quotagate-quota-reset", resets.encode())]
        return QuotaExhausted(message, code=limit.name, status=status, headers=headers)


def _larger_than_quota(
    limit: CompiledLimit, check: CounterCheck, ctx: RequestContext, currency: str
) -> BadRequest:
    period = _ADJECTIVE.get(limit.period or "", "")
    if limit.unit == "micros":
        whole = f"{period}budget ({limit.name}) of {format_money(check.limit)} {currency}"
        may = f"cost up to {format_money(check.cost)} {currency}"
    else:
        whole = f"{period}{limit.unit} quota ({limit.name}) of {check.limit} {limit.unit}"
        may = f"use up to {check.cost} {limit.unit}"
    return larger_than_quota(whole, may, ctx)


def _check(
    limit: CompiledLimit,
    values: ScopeValues,
    unique: str,
    ctx: RequestContext,
    p: Principal,
    scale: float = 1.0,  # model pressure (shaping.pressure) on this plan's rate limits
) -> Check:
    unit = limit.unit
    cost = (
        ctx.reserved_tokens if unit == "tokens" else ctx.reserved_micros if unit == "micros" else 1
    )
    if limit.kind == "rate":
        raise_ = p.grants.get("rate") if p.grants else None
        factor = raise_.override / RATE_PERMILLE if raise_ is not None and raise_.override else 1.0
        if limit.unit == "concurrent":
            scale = 1.0
        if factor != 1.0 or scale != 1.0:
            return limit.check(values, unique, cost, factor=factor, scale=scale)
        return limit.check(values, unique, cost)
    grant = p.grants.get(limit.resource) if p.grants and limit.resource else None
    amount = grant.apply(limit.amount) if grant is not None else None
    return limit.quota_check(values, cost, p.zone, amount)


def _rate_headers(
    into: Headers,
    limits: LimitSet,
    outcomes: Sequence[CheckOutcome],
    denied: int,
    scale: float = 1.0,
) -> None:
    rates = limits.limits[: limits.rates]  # the rate limits come first
    into += rate_limit_headers(rates, outcomes, denied, limits.policy_header, scale)
    if scale != 1.0:  # model pressure scaled them (shaping.pressure)
        into.append((b"x-quotagate-limit-factor", f"{scale:g}".encode()))


def _undo_degrade(
    ctx: RequestContext, mark: int, origin: tuple[str, Target | None, Prices]
) -> None:
    """The request is refused: it was not served by a fallback nor clamped."""
    del ctx.response_headers[mark:]
    ctx.model, ctx.target, ctx.price = origin


def _fall_back(
    ctx: RequestContext, policy: PolicySource, router: Router, model: str, because: str
) -> None:
    route = policy.snapshot.catalog[model]
    # None usable now: its first deployment, and forward's retries take it from there.
    target = router.choose(route, router.region(ctx, route)) or route.targets[0]
    switch_model(ctx, target, "quota", because)


def ask_for_stream_usage(ctx: RequestContext) -> None:
    """Settlement needs the stream's usage chunk: ask for it, and note whether the client
    did (if not, the chunk is taken out of the stream before the client sees it)."""
    options = ctx.payload.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage") is True:
        return
    ctx.payload["stream_options"] = {**options, "include_usage": True}
    ctx.payload_changed = True
    ctx.strip_usage = True


def _refusal(limit: CompiledLimit) -> str:
    scope = "+".join(limit.scopes)
    if limit.unit == "concurrent":
        return f"Too many concurrent requests on {scope}: limit {limit.amount} at once."
    return (
        f"Rate limit reached for {limit.unit} on {scope}: limit {limit.amount} per "
        f"{limit.window:g}s. Retry after the time in the Retry-After header."
    )
