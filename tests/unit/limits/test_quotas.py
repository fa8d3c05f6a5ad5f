"""Quotas and budgets: compiled into calendar counters, priced in integer micro-units,
raised by credits, and reset at the tenant's own midnight and billing day."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from quotagate.budget.credits import credit_request, expiry
from quotagate.budget.pricing import cost_micros, format_money, micros_per_1m, output_tokens_for
from quotagate.config.loader import parse_policy
from quotagate.config.schema import Price, QuotaRule
from quotagate.config.snapshot import Snapshot
from quotagate.errors import ConfigError
from quotagate.limits.calendar import candidate_periods
from quotagate.limits.policy import ScopeValues
from quotagate.limits.quotas import compile_quota
from quotagate.store.base import CounterCheck, ReservationCheck
from quotagate.store.memory import MemoryStore

VALUES = ScopeValues("t1", "k1", "u1", "1.2.3.4", "gpt-4", "chat.completions")
GPT4 = (30_000_000, 60_000_000)  # micro-units per 1M input / output tokens
GPT35 = (500_000, 1_500_000)


def quota(**fields: Any) -> QuotaRule:
    return QuotaRule.model_validate(fields)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


# --- compile_quota -------------------------------------------------------------------


def test_a_per_model_token_quota_compiles_to_a_named_calendar_counter() -> None:
    limit = compile_quota(quota(model="gpt-3.5-turbo", tokens=1000, per="day"), "free.")
    assert limit.name == "free.tenant-tokens-day-gpt-3.5-turbo"
    assert (limit.kind, limit.unit, limit.algorithm) == ("quota", "tokens", "calendar")
    assert (limit.amount, limit.capacity, limit.period) == (1000, 1000, "day")
    assert limit.model == "gpt-3.5-turbo"
    assert limit.scopes == ("tenant",) and limit.tenant_tagged
    assert limit.resource == "tokens"  # tenant token quotas are what token credits raise
    assert limit.degrade == "reject" and limit.fallback is None
    assert limit.on_store_error == "closed"  # a quota is never given away when unsure


def test_a_user_requests_quota_has_no_credit_resource() -> None:
    limit = compile_quota(quota(scope="user", requests=50, per="week"), "pro.")
    assert limit.name == "pro.user-requests-week"
    assert limit.unit == "requests" and limit.amount == 50
    assert limit.resource is None and limit.model is None


def test_a_budget_counts_micro_units_and_names_itself_budget() -> None:
    rule = quota(cost=12.5, per="month", alerts=[0.9, 0.8])
    limit = compile_quota(rule, "paid.", budget=True)
    assert limit.name == "paid.budget-month"
    assert limit.unit == "micros" and limit.amount == 12_500_000
    assert limit.resource == "budget"
    assert limit.alerts == (0.8, 0.9)  # sorted: the highest reached is the last


def test_a_fractional_cent_budget_is_exact_in_micros() -> None:
    # 0.1 + 0.2 is not 0.3 in floats; the budget must still be 300,000 micro-units.
    assert compile_quota(quota(cost=0.1 + 0.2), "p.", budget=True).amount == 300_000


def test_degrade_actions_compile() -> None:
    fallback = compile_quota(quota(cost=1.0, on_exhausted={"fallback": "gpt-3.5-turbo"}), "p.")
    assert (fallback.degrade, fallback.fallback) == ("fallback", "gpt-3.5-turbo")
    clamp = compile_quota(quota(tokens=10, on_exhausted="clamp"), "p.")
    assert (clamp.degrade, clamp.fallback) == ("clamp", None)


def test_a_quota_keyed_by_user_is_tagged_by_tenant() -> None:
    limit = compile_quota(quota(scope="user", tokens=10), "p.")
    assert limit.counter_key(VALUES) == "rl:{t:t1}:p.user-tokens-month:u1"


@pytest.mark.parametrize("how", ["check", "quota_check"])
def test_a_quota_check_uses_the_tenant_zone_and_the_credited_amount(how: str) -> None:
    """``quota_check`` is the request path's shortcut for ``check``: the same check."""
    limit = compile_quota(quota(tokens=1000, per="month"), "p.")
    zone = ("Europe/Berlin", 15)
    before = candidate_periods(time.time(), "month", ZoneInfo("Europe/Berlin"), 15)
    if how == "check":
        check = limit.check(VALUES, "id", 40, zone=zone, amount=1500)
    else:
        check = limit.quota_check(VALUES, 40, zone, 1500)
    after = candidate_periods(time.time(), "month", ZoneInfo("Europe/Berlin"), 15)
    assert isinstance(check, CounterCheck)
    assert (check.limit, check.cost, check.window) == (1500, 40, 0.0)
    assert (check.start, check.end, check.next_end) in (before, after)
    assert datetime.fromtimestamp(check.end, ZoneInfo("Europe/Berlin")).day == 15


def test_an_override_to_zero_is_a_limit_of_zero() -> None:
    """``credits add --tokens 0 --kind override`` is accepted (credit_request allows a zero
    override): the quota must then be 0, not the plan's amount."""
    limit = compile_quota(quota(tokens=1000, per="day"), "p.")
    check = limit.check(VALUES, "id", 10, amount=0)
    assert isinstance(check, CounterCheck)
    assert check.limit == 0


# --- Snapshot: limit sets per model ----------------------------------------------------

POLICY = """
models:
  gpt-3.5-turbo:
    price: {input_per_1m: 0.5, output_per_1m: 1.5}
    deployments: [{url: "http://127.0.0.1:9/v1"}]
  gpt-4:
    price: {input_per_1m: 30, output_per_1m: 60}
    deployments: [{url: "http://127.0.0.1:9/v1"}]
  text-embedding-3-small:
    deployments: [{url: "http://127.0.0.1:9/v1"}]
global_limits:
  - {scope: ip, requests: 1000, per: 1m}
plans:
  free:
    models: [gpt-3.5-turbo]
    quotas:
      - {scope: tenant, model: gpt-3.5-turbo, tokens: 1000, per: day}
  paid:
    models: [gpt-3.5-turbo, gpt-4]
    limits:
      - {scope: key, tokens: 40000, per: 1m}
    quotas:
      - {scope: tenant, model: gpt-4, tokens: 100000, per: day}
      - {scope: user, tokens: 1000000, per: month}
    budget: {amount: 500.00, currency: EUR, per: month, alerts: [0.8, 0.9],
             on_exhausted: {fallback: gpt-3.5-turbo}}
    clamp_min_tokens: 32
  plain:
    models: ["*"]
    limits:
      - {scope: key, requests: 10, per: 1m}
"""


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return Snapshot.compile(parse_policy(POLICY, env={}))


def names(limits: Any) -> list[str]:
    return [limit.name for limit in limits.limits]


def test_a_model_quota_applies_to_its_model_only(snapshot: Snapshot) -> None:
    paid = snapshot.plans["paid"]
    gpt4, gpt35 = paid.limits_for("gpt-4"), paid.limits_for("gpt-3.5-turbo")
    assert names(gpt4) == [
        "global.ip-requests-1m",
        "paid.key-tokens-1m",
        "paid.tenant-tokens-day-gpt-4",
        "paid.user-tokens-month",
        "paid.budget-month",
    ]
    assert names(gpt35) == [
        "global.ip-requests-1m",
        "paid.key-tokens-1m",
        "paid.user-tokens-month",
        "paid.budget-month",
    ]
    assert gpt4.rates == gpt35.rates == 2  # rates first: the RateLimit headers
    assert gpt4.metered and gpt4.has_quotas
    assert paid.limits_for("not-in-the-catalog").limits == gpt35.limits


def test_settlement_picks_the_token_and_money_counters(snapshot: Snapshot) -> None:
    """What settlement adjusts, picked from a request's checks by position: every token
    or money counter (none, one or several), never a request counter."""
    checks = [f"check-{i}" for i in range(5)]
    paid, free = snapshot.plans["paid"], snapshot.plans["free"]
    gpt4 = paid.limits_for("gpt-4")
    assert gpt4.settled == (1, 2, 3, 4)
    assert gpt4.settled_checks(checks) == ["check-1", "check-2", "check-3", "check-4"]
    assert free.limits_for("gpt-3.5-turbo").settled_checks(checks) == ["check-1"]
    plain = snapshot.plans["plain"].limits_for("gpt-4")
    assert plain.settled_checks(checks) == []


def test_plan_settings_for_quotas_are_compiled(snapshot: Snapshot) -> None:
    paid, free = snapshot.plans["paid"], snapshot.plans["free"]
    assert (paid.currency, paid.clamp_min_tokens, paid.default_max_tokens) == ("EUR", 32, 1024)
    assert (free.currency, free.clamp_min_tokens) == ("USD", 16)
    budget = paid.limits_for("gpt-4").limits[-1]
    assert (budget.amount, budget.degrade, budget.fallback) == (
        500_000_000,
        "fallback",
        "gpt-3.5-turbo",
    )


def test_a_model_outside_every_quota_is_unmetered_by_quotas(snapshot: Snapshot) -> None:
    free = snapshot.plans["free"]
    assert names(free.limits_for("gpt-3.5-turbo"))[-1] == "free.tenant-tokens-day-gpt-3.5-turbo"
    embeddings = free.limits_for("text-embedding-3-small")
    assert names(embeddings) == ["global.ip-requests-1m"]
    assert not embeddings.has_quotas and not embeddings.metered


def test_a_plan_without_quotas_keeps_its_rates_only(snapshot: Snapshot) -> None:
    plain = snapshot.plans["plain"].limits_for("gpt-4")
    assert names(plain) == ["global.ip-requests-1m", "plain.key-requests-1m"]
    assert plain.rates == 2 and not plain.has_quotas and not plain.metered


def test_quotas_are_required_of_the_store(snapshot: Snapshot) -> None:
    # Quotas default to on_store_error: closed, so readiness needs the store...
    assert snapshot.store_required
    # ...while rate limits default to local, which needs none.
    assert not Snapshot.compile(parse_policy(policy_with(PLAIN), env={})).store_required


PLAIN = """  plain:
    models: ["*"]
    limits:
      - {scope: key, requests: 10, per: 1m}
"""


# --- quota validation ----------------------------------------------------------------


def policy_with(plan: str) -> str:
    return POLICY.split("plans:")[0] + "plans:\n" + plan


@pytest.mark.parametrize(
    ("plan", "problem"),
    [
        (
            "  p:\n    models: [gpt-4]\n    quotas: [{tokens: 10, cost: 1.0}]\n",
            "plans.p.quotas[0]: a quota needs exactly one amount: tokens, requests or cost",
        ),
        (
            "  p:\n    models: [gpt-4]\n    quotas: [{per: day}]\n",
            "plans.p.quotas[0]: a quota needs exactly one amount: tokens, requests or cost",
        ),
        (
            "  p:\n    models: [gpt-4]\n    quotas: [{requests: 10, on_exhausted: clamp}]\n",
            "plans.p.quotas[0]: a requests quota cannot clamp max_tokens",
        ),
        (
            "  p:\n    models: [gpt-4]\n"
            "    quotas: [{tokens: 10, on_exhausted: {fallback: gpt-5}}]\n",
            "plans.p: unknown model 'gpt-5' in a quota",
        ),
        (
            "  p:\n    models: [gpt-4]\n    budget: {amount: 5, on_exhausted: {fallback: gpt-5}}\n",
            "plans.p: unknown model 'gpt-5' in a quota",
        ),
        (
            "  p:\n    models: [gpt-4]\n    quotas: [{tokens: 10, model: gpt-5}]\n",
            "plans.p: unknown model 'gpt-5' in a quota",
        ),
        (
            "  p:\n    models: [gpt-4]\n    quotas: [{tokens: 10, per: 1h}]\n",
            "plans.p.quotas[0].per: Input should be 'day', 'week' or 'month'",
        ),
        (
            "  p:\n    models: [gpt-4]\n    budget: {amount: 5, alerts: [0.8, 1.0]}\n",
            "plans.p.budget.alerts[1]: Input should be less than 1",
        ),
        (
            "  p:\n    models: [gpt-4]\n    budget: {amount: 0}\n",
            "plans.p.budget.amount: Input should be greater than 0",
        ),
    ],
    ids=[
        "two-amounts",
        "no-amount",
        "clamp-requests",
        "unknown-fallback",
        "budget-unknown-fallback",
        "unknown-quota-model",
        "rolling-period",
        "threshold-of-one",
        "zero-budget",
    ],
)
def test_bad_quotas_are_refused_with_their_field(plan: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(policy_with(plan), env={})
    assert problem in str(info.value)


def test_a_fallback_must_be_a_model_of_the_plan() -> None:
    """A plan's model list is an allow-list: a degrade action must not serve a model the
    plan does not include (here gpt-4 only, falling back to gpt-3.5-turbo)."""
    plan = (
        "  p:\n    models: [gpt-4]\n"
        "    budget: {amount: 5, on_exhausted: {fallback: gpt-3.5-turbo}}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_policy(policy_with(plan), env={})
    assert "plans.p" in str(info.value) and "gpt-3.5-turbo" in str(info.value)


# --- pricing -------------------------------------------------------------------------


def test_prices_become_integer_micros_per_million() -> None:
    assert micros_per_1m(Price(input_per_1m=0.5, output_per_1m=1.5)) == GPT35
    assert micros_per_1m(Price(input_per_1m=0.15, output_per_1m=0.6)) == (150_000, 600_000)
    assert micros_per_1m(Price()) == (0, 0)


@pytest.mark.parametrize(
    ("prompt", "completion", "prices", "micros"),
    [
        (16, 50, GPT4, 3480),  # 16 * 30 + 50 * 60: exact
        (16, 51, GPT35, 85),  # 8 + 76.5 → 85: rounded up
        (1, 0, GPT35, 1),  # half a micro-unit is charged as one
        (0, 0, GPT35, 0),
        (1_000_000, 1_000_000, GPT35, 2_000_000),
        (3, 0, (333_333, 0), 1),  # 0.999999 → 1
        (0, 1, (0, 1_000_000), 1),
    ],
)
def test_cost_is_rounded_up_to_the_next_micro_unit(
    prompt: int, completion: int, prices: tuple[int, int], micros: int
) -> None:
    assert cost_micros(prompt, completion, prices) == micros


@pytest.mark.parametrize(
    ("micros", "prompt", "prices"),
    [(3520, 12, GPT4), (10_000, 0, GPT4), (97, 16, GPT35), (1, 1, GPT35), (59_999, 1, GPT4)],
)
def test_output_tokens_for_is_the_most_that_fits(
    micros: int, prompt: int, prices: tuple[int, int]
) -> None:
    tokens = output_tokens_for(micros, prompt, prices)
    assert cost_micros(prompt, tokens, prices) <= micros
    assert cost_micros(prompt, tokens + 1, prices) > micros


def test_output_tokens_for_known_values() -> None:
    assert output_tokens_for(3520, 12, GPT4) == 52  # (3520 - 360) / 60 = 52.67
    assert output_tokens_for(100, 10, GPT4) == 0  # the prompt alone costs 300
    assert output_tokens_for(0, 0, (0, 0)) == 1 << 30  # free output: no bound
    assert output_tokens_for(0, 1, (1_000_000, 0)) == 0  # the prompt does not fit


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (12_000_345, "12.000345"),
        (0, "0.000000"),
        (5, "0.000005"),
        (499_987_000, "499.987000"),
        (-1, "-0.000001"),
        (-2_500_000, "-2.500000"),
        (10**15 + 1, "1000000000.000001"),  # past float precision, still exact
    ],
)
def test_format_money_is_exact(micros: int, text: str) -> None:
    assert format_money(micros) == text


# --- credits ---------------------------------------------------------------------------


def test_a_budget_topup_is_stored_in_micros() -> None:
    assert credit_request("topup", 12.5, None, None) == ("budget", 12_500_000, None)


def test_a_token_override_may_be_zero() -> None:
    assert credit_request("override", None, 0, None) == ("tokens", 0, None)


def test_a_burst_credit_expires_after_its_duration() -> None:
    before = datetime.now(UTC)
    resource, amount, expires = credit_request("burst", None, 5000, "2h")
    after = datetime.now(UTC)
    assert (resource, amount) == ("tokens", 5000)
    assert expires is not None
    assert before + timedelta(hours=2) <= expires <= after + timedelta(hours=2)


@pytest.mark.parametrize(
    ("kind", "budget", "tokens", "expires", "problem"),
    [
        ("gift", None, 10, None, "kind must be one of topup, burst, override"),
        ("topup", 1.0, 10, None, "give exactly one of --budget or --tokens"),
        ("topup", None, None, None, "give exactly one of --budget or --tokens"),
        ("topup", None, 0, None, "the amount must be positive"),
        ("topup", -1.0, None, None, "the amount must be positive"),
        ("override", None, -5, None, "the amount must be positive"),
        ("burst", None, 10, None, "a burst credit expires: give --expires"),
        # Refused with ValueError (the CLI's exit 2, the admin API's 422), never an
        # OverflowError (a traceback, a 500); an expiry already passed would never count.
        ("burst", None, 10, "99999999999d", "'99999999999d' is out of range"),
        ("burst", None, 10, "9999-12-31T23:00:00-05:00", "is out of range"),
        ("burst", None, 10, "2000-01-01T00:00:00", "has already passed"),
        ("topup", float("inf"), None, None, "must be a number up to 1000000000"),
        ("topup", float("-inf"), None, None, "must be a number up to 1000000000"),
        ("topup", float("nan"), None, None, "must be a number up to 1000000000"),
        ("topup", 1e10, None, None, "must be a number up to 1000000000"),
        ("topup", None, 10**15 + 1, None, "must be at most 1000000000000000"),
    ],
)
def test_bad_credit_requests_say_what_is_wrong(
    kind: str, budget: float | None, tokens: int | None, expires: str | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        credit_request(kind, budget, tokens, expires)


def test_expiry_accepts_durations_and_iso_times() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert expiry("90m", now) == datetime(2026, 11, 23, 13, 30, tzinfo=UTC)
    assert expiry("2026-12-01T00:00:00", now) == datetime(2026, 12, 1, tzinfo=UTC)  # naive: UTC
    berlin = expiry("2026-12-01T00:00:00+01:00", now)
    assert berlin == datetime(2026, 11, 30, 23, tzinfo=UTC)  # the same instant
    assert expiry(None, now) is None
    with pytest.raises(ValueError):
        expiry("next tuesday", now)


# --- calendar resets on an injected clock -------------------------------------------------


class Wall:
    """The store's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counter(now: float, period: str, tz: str, anchor: int = 1, cost: int = 1) -> CounterCheck:
    """The check a gateway whose clock reads ``now`` builds for a 10-unit quota."""
    start, end, next_end = candidate_periods(now, period, ZoneInfo(tz), anchor)  # type: ignore[arg-type]
    return CounterCheck("rl:{t:t1}:q", 10, cost, 0.0, start, end, next_end)


@pytest.mark.parametrize(
    ("period", "tz", "anchor", "boundary"),
    [
        # 2026-11-24 00:00 in Berlin (CET, UTC+1) is 23:00 UTC the day before.
        ("day", "Europe/Berlin", 1, utc(2026, 11, 23, 23)),
        # Billing day 15: the month from 15 Nov ends 15 Dec 00:00 CET = 14 Dec 23:00 UTC.
        ("month", "Europe/Berlin", 15, utc(2026, 12, 14, 23)),
        # Summer time: 15 Jul 00:00 CEST is 14 Jul 22:00 UTC.
        ("month", "Europe/Berlin", 15, utc(2026, 7, 14, 22)),
        # Spring forward in Los Angeles (8 Mar 2026 is 23 hours): 9 Mar 00:00 PDT = 07:00 UTC.
        ("day", "America/Los_Angeles", 1, utc(2026, 3, 9, 7)),
        # Fall back (1 Nov 2026 is 25 hours): 2 Nov 00:00 PST = 08:00 UTC.
        ("day", "America/Los_Angeles", 1, utc(2026, 11, 2, 8)),
        # Billing day 31 in February: the month ends 28 Feb 00:00 PST = 08:00 UTC.
        ("month", "America/Los_Angeles", 31, utc(2026, 2, 28, 8)),
    ],
    ids=["berlin-day", "berlin-billing-15", "berlin-billing-15-summer", "la-spring", "la-fall",
         "la-billing-31-feb"],
)  # fmt: skip
async def test_a_quota_resets_exactly_at_the_local_boundary(
    period: str, tz: str, anchor: int, boundary: float
) -> None:
    wall = Wall(boundary - 3600)
    store = MemoryStore(clock=lambda: 0.0, wall=wall)
    # The boundary is where the calendar puts it: the end of the period an hour before.
    assert counter(wall.now, period, tz, anchor).end == boundary
    assert (await store.acquire([counter(wall.now, period, tz, anchor, cost=10)])).allowed
    for moment in (boundary - 1, boundary - 0.001):
        wall.now = moment
        denied = await store.acquire([counter(moment, period, tz, anchor)])
        assert not denied.allowed, f"reset {boundary - moment}s early"
        assert denied.outcomes[0].remaining == 0
        assert denied.outcomes[0].retry_after == pytest.approx(boundary - moment)
    wall.now = boundary
    fresh = await store.acquire([counter(boundary, period, tz, anchor)])
    assert fresh.allowed and fresh.outcomes[0].remaining == 9


async def test_a_gateway_a_little_behind_midnight_still_counts_into_the_new_day() -> None:
    """The gateway built its check at 23:59:59 Berlin time; the store's clock is past
    midnight: the store picks the next period from the bounds it was handed."""
    midnight = utc(2026, 11, 23, 23)
    wall = Wall(midnight - 10)
    store = MemoryStore(clock=lambda: 0.0, wall=wall)
    assert (await store.acquire([counter(wall.now, "day", "Europe/Berlin", cost=10)])).allowed
    wall.now = midnight + 0.5
    late = counter(midnight - 1, "day", "Europe/Berlin", cost=4)  # stale bounds
    admitted = await store.acquire([late])
    assert admitted.allowed and admitted.outcomes[0].remaining == 6
    assert admitted.outcomes[0].reset_after == pytest.approx(86400 - 0.5)
    # ...and a check with the new day's own bounds sees the same counter.
    current = await store.acquire([counter(wall.now, "day", "Europe/Berlin", cost=6)])
    assert current.allowed and current.outcomes[0].remaining == 0


async def test_a_refund_settled_after_midnight_does_not_credit_the_new_day() -> None:
    """A request reserved 8 units at 23:59 and used 2; its answer settles after
    midnight. The new day's counter must not be lowered by the old day's refund."""
    midnight = utc(2026, 11, 23, 23)  # Berlin midnight
    wall = Wall(midnight - 60)
    store = MemoryStore(clock=lambda: 0.0, wall=wall)
    reserved = counter(wall.now, "day", "Europe/Berlin", cost=8)
    record = ReservationCheck("rs:{t:t1}", "req-1", 900.0)
    assert (await store.acquire([reserved, record])).allowed
    wall.now = midnight + 5
    assert (await store.acquire([counter(wall.now, "day", "Europe/Berlin", cost=5)])).allowed
    assert await store.settle(record, [reserved], [2 - 8])  # used 2 of the 8 reserved
    # The new day has used 5 of its 10: 5 remain, so 6 more must not fit.
    probe = await store.acquire([counter(wall.now, "day", "Europe/Berlin", cost=6)])
    assert not probe.allowed, "the old day's refund was credited to the new day"
    assert probe.outcomes[0].remaining == 5


def test_offsets_are_calendar_offsets_not_fixed_hours() -> None:
    # Sanity of the fixtures above: the LA spring day really is 23 hours long.
    la = ZoneInfo("America/Los_Angeles")
    start, end, _ = candidate_periods(utc(2026, 3, 8, 12), "day", la)
    assert end - start == 23 * 3600
    assert datetime.fromtimestamp(start, la).utcoffset() == timedelta(hours=-8)
    assert datetime.fromtimestamp(end, la).utcoffset() == timedelta(hours=-7)
    assert datetime.fromtimestamp(end, UTC) == datetime(2026, 3, 9, 7, tzinfo=UTC)
