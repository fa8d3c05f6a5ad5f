"""Units of routing: the circuit breaker's states on a scripted clock, the retry budget,
region tiers and the weighted choice between deployments."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from quotagate.config.loader import parse_policy
from quotagate.config.schema import BreakerConfig
from quotagate.config.snapshot import Snapshot
from quotagate.routing.health import CLOSED, HALF_OPEN, OPEN, DeploymentHealth
from quotagate.routing.router import RetryBudget, Router


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def health(clock: Clock, **config: Any) -> DeploymentHealth:
    return DeploymentHealth("gpt-4", "eu-1", "eu-west", BreakerConfig(**config), clock)


def test_consecutive_failures_open_the_circuit_and_a_probe_closes_it() -> None:
    clock = Clock()
    h = health(clock, consecutive_failures=3, open_for=5, min_requests=1000)
    h.failed("timeout")
    h.failed("timeout")
    assert h.state is CLOSED and h.available(clock.now)
    h.failed("timeout")
    assert h.state is OPEN and not h.available(clock.now)
    clock.now += 4.9
    assert not h.available(clock.now)
    clock.now += 0.2
    assert h.available(clock.now) and h.state is HALF_OPEN
    probe = h.begin()
    assert probe == 1  # a probe of the first half-open period
    assert not h.available(clock.now)  # one probe at a time
    h.succeeded(0.1, probe)
    h.end(probe)
    assert h.state is CLOSED and h.available(clock.now)


def test_a_success_that_is_not_this_periods_probe_does_not_close_the_circuit() -> None:
    clock = Clock()
    h = health(clock, consecutive_failures=1, open_for=1)
    old = h.begin()  # a long request sent while closed
    h.failed("status 500")  # another one fails: open
    h.succeeded(0.1, old)  # the long one ends well: proves nothing about now
    assert h.state is OPEN
    clock.now += 1.5
    assert h.available(clock.now)  # half open
    h.succeeded(0.1, old)
    assert h.state is HALF_OPEN
    h.end(old)
    assert h.probes == 0


def test_probes_of_a_failed_period_do_not_free_slots_of_the_next() -> None:
    clock = Clock()
    h = health(clock, consecutive_failures=1, open_for=1, half_open_probes=1)
    h.failed("x")
    for _ in range(3):  # several failed half-open periods
        clock.now += 1.5
        assert h.available(clock.now)
        probe = h.begin()
        h.failed("x")
        h.end(probe)
        assert h.probes == 0
    clock.now += 1.5
    assert h.available(clock.now)
    h.begin()
    assert not h.available(clock.now)  # still one probe at a time


def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = Clock()
    h = health(clock, consecutive_failures=1, open_for=1)
    h.failed("status 500")
    clock.now += 1.5
    assert h.available(clock.now)
    probe = h.begin()
    h.failed("status 500")
    h.end(probe)
    assert h.state is OPEN and not h.available(clock.now)
    clock.now += 1.1
    assert h.available(clock.now)


def test_a_failure_rate_over_the_window_opens_the_circuit() -> None:
    clock = Clock()
    h = health(clock, consecutive_failures=100, failure_rate=0.5, min_requests=10, window=10)
    for _ in range(4):
        h.succeeded(0.1)
        clock.now += 0.1
        h.failed("status 502")  # never two in a row
    assert h.state is CLOSED  # half failed, but 8 requests are below min_requests
    h.succeeded(0.1)
    h.failed("status 502")
    assert h.state is OPEN  # 5 of 10


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    h = health(clock, consecutive_failures=100, failure_rate=0.5, min_requests=4, window=10)
    for _ in range(3):
        h.failed("x")  # below min_requests: no rate yet
    clock.now += 25  # two windows later: forgotten
    for _ in range(3):
        h.succeeded(0.1)
    h.failed("x")  # 1 of the last 4 (with the old ones it would be 4 of 7)
    assert h.state is CLOSED


def test_a_429_throttles_without_opening_and_a_health_check_takes_it_out() -> None:
    clock = Clock()
    h = health(clock)
    h.throttled(2.0)
    assert h.state is CLOSED and not h.available(clock.now)
    clock.now += 2.1
    assert h.available(clock.now)
    h.checked(False)
    assert not h.available(clock.now)
    h.checked(True)
    assert h.available(clock.now)


def test_the_retry_budget_allows_its_share_of_requests() -> None:
    clock = Clock()
    budget = RetryBudget(0.1, 0.0, clock)
    for _ in range(100):
        budget.request()
    allowed = sum(budget.allow() for _ in range(50))
    assert allowed == 10
    clock.now += 25  # the window has passed: nothing recent, nothing allowed
    assert not budget.allow()
    floor = RetryBudget(0.0, 1.0, clock)  # 1 a second over 10 s
    assert sum(floor.allow() for _ in range(20)) == 10


POLICY = """
models:
  gpt-4:
    deployments:
      - {url: "http://127.0.0.1:9001/v1", region: eu-west, weight: 2, name: eu-a}
      - {url: "http://127.0.0.1:9002/v1", region: eu-west, name: eu-b}
      - {url: "http://127.0.0.1:9003/v1", region: us-east, name: us-a, max_concurrency: 2}
      - {url: "http://127.0.0.1:9004/v1", region: ap-south, name: ap-a}
    aliases: [gpt4]
plans:
  free: {models: ["*"]}
routing:
  region: eu-west
  nearest: {eu-west: [us-east], us-east: [eu-west]}
"""


@pytest.fixture
def snapshot() -> Snapshot:
    return Snapshot.compile(parse_policy(POLICY, env={}))


def names(tiers: Any) -> list[list[str]]:
    return [[t.name for t in tier] for tier in tiers]


def test_tiers_are_the_region_then_its_nearest_then_the_rest(snapshot: Snapshot) -> None:
    route = snapshot.catalog["gpt-4"]
    nearest = snapshot.policy.routing.nearest
    assert names(route.tiers("eu-west", nearest)) == [["eu-a", "eu-b"], ["us-a"], ["ap-a"]]
    assert names(route.tiers("us-east", nearest)) == [["us-a"], ["eu-a", "eu-b"], ["ap-a"]]
    assert names(route.tiers(None, nearest)) == [["eu-a", "eu-b", "us-a", "ap-a"]]
    assert snapshot.catalog["gpt4"] is route


def test_weights_hold_when_idle_and_load_shifts_the_choice(snapshot: Snapshot) -> None:
    router = Router(snapshot.policy.routing, random.Random(7))
    route = snapshot.catalog["gpt-4"]
    picks = Counter(router.choose(route, "eu-west").name for _ in range(3000))  # type: ignore[union-attr]
    assert set(picks) == {"eu-a", "eu-b"}
    assert 1.8 < picks["eu-a"] / picks["eu-b"] < 2.2  # weight 2 : 1
    busy = route.targets[0].health
    busy.in_flight = 5  # eu-a's weight 2 / 6 against eu-b's 1 / 1
    picks = Counter(router.choose(route, "eu-west").name for _ in range(3000))  # type: ignore[union-attr]
    assert picks["eu-b"] > 2 * picks["eu-a"]
    busy.in_flight = 0


def test_open_or_saturated_deployments_spill_over(snapshot: Snapshot) -> None:
    router = Router(snapshot.policy.routing, random.Random(1))
    route = snapshot.catalog["gpt-4"]
    eu_a, eu_b, us_a, _ = route.targets
    for target in (eu_a, eu_b):
        target.health.consecutive = 99
        target.health.failed("down")
    assert router.choose(route, "eu-west") is us_a
    us_a.health.in_flight = 2  # at its max_concurrency
    chosen = router.choose(route, "eu-west")
    assert chosen is not None and chosen.name == "ap-a"
    assert router.choose(route, "eu-west", tried=[chosen]) is None


CHAINS = """
models:
  gpt-4:
    price: {input_per_1m: 30, output_per_1m: 60}
    deployments:
      - {url: "http://127.0.0.1:9001/v1", name: a, region: eu-west}
      - {url: "http://127.0.0.1:9002/v1", name: b, region: eu-west,
         price: {input_per_1m: 20, output_per_1m: 40}}
    fallback: [gpt-4o-mini, gpt-3.5-turbo]
  gpt-4o-mini:
    deployments: [{url: "http://127.0.0.1:9003/v1"}]
  gpt-3.5-turbo:
    deployments: [{url: "http://127.0.0.1:9004/v1"}]
plans:
  free: {models: [gpt-4, gpt-3.5-turbo]}
  pro:
    models: ["*"]
    fallbacks: {gpt-4: [gpt-3.5-turbo]}
routing:
  strategy: latency
"""


class Ctx:
    """The few request fields the router reads."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.scope: dict[str, Any] = {"headers": []}
        self.model = "gpt-4"
        self.principal = None


def test_a_deployment_price_overrides_the_models() -> None:
    snapshot = Snapshot.compile(parse_policy(CHAINS, env={}))
    a, b = snapshot.catalog["gpt-4"].targets
    assert a.prices == (30_000_000, 60_000_000)
    assert b.prices == (20_000_000, 40_000_000)


def test_fallback_chains_come_from_the_plan_else_the_model_within_the_plan() -> None:
    snapshot = Snapshot.compile(parse_policy(CHAINS, env={}))
    router = Router(snapshot.policy.routing)
    route = snapshot.catalog["gpt-4"]
    free, pro = snapshot.plans["free"], snapshot.plans["pro"]
    # The model's chain, without gpt-4o-mini: the free plan does not include it.
    assert router.chain_of(Ctx(free), snapshot.catalog, route) == ("gpt-3.5-turbo",)  # type: ignore[arg-type]
    # The plan's own chain replaces the model's.
    assert router.chain_of(Ctx(pro), snapshot.catalog, route) == ("gpt-3.5-turbo",)  # type: ignore[arg-type]
    for target in route.targets:
        target.health.consecutive = 99
        target.health.failed("down")
    chosen = router.find(Ctx(pro), snapshot.catalog)  # type: ignore[arg-type]
    assert chosen is not None and chosen.model == "gpt-3.5-turbo"


def test_the_latency_strategy_prefers_the_faster_deployment() -> None:
    snapshot = Snapshot.compile(parse_policy(CHAINS, env={}))
    router = Router(snapshot.policy.routing, random.Random(3))
    route = snapshot.catalog["gpt-4"]
    fast, slow = route.targets
    fast.health.succeeded(0.1)
    slow.health.succeeded(0.4)  # 4x slower: a quarter of the weight
    picks = Counter(router.choose(route, None).name for _ in range(2000))  # type: ignore[union-attr]
    assert 3.2 < picks["a"] / picks["b"] < 4.8, picks


CLASSES = """
models:
  gpt-4:
    deployments: [{url: "http://127.0.0.1:9001/v1"}]
plans:
  free:
    models: ["*"]
    limits:
      - {scope: key, requests: 100, per: 1m}
      - {scope: key, requests: 10, per: 1m, classes: [batch]}
  plain:
    models: ["*"]
    limits: [{scope: key, requests: 100, per: 1m}]
"""


def test_a_class_limit_applies_to_its_class_only_on_counters_of_its_own() -> None:
    snapshot = Snapshot.compile(parse_policy(CLASSES, env={}))
    free = snapshot.plans["free"]
    interactive = [limit.name for limit in free.limits_for("gpt-4").limits]
    batch = [limit.name for limit in free.limits_for("gpt-4", batch=True).limits]
    assert interactive == ["free.key-requests-1m"]
    assert batch == ["free.key-requests-1m", "free.batch.key-requests-1m"]
    plain = snapshot.plans["plain"]
    assert plain.limits_for("gpt-4", batch=True) is plain.limits_for("gpt-4")


def test_health_signals_are_read_from_json_paths_and_prometheus_text() -> None:
    from quotagate.routing.checks import _field, _metric

    assert _field('{"gpu": {"kv_cache_usage": 0.93}}', "gpu.kv_cache_usage") == 0.93
    assert _field('{"memory_pressure": true}', "memory_pressure") is None
    assert _field('{"gpu": 1}', "gpu.kv_cache_usage") is None
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0"} 0.42\n'
        'vllm:gpu_cache_usage_perc{engine="1"} 0.87\n'
    )
    assert _metric(text, "vllm:gpu_cache_usage_perc") == 0.87  # the fullest engine
    assert _metric(text, "vllm:num_requests_waiting") is None
