"""``quotagate top``'s arithmetic: rates and percentiles from two scrapes."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from quotagate.observability.top import Frame, Samples, quantile, quantiles, rates


def sample(name: str, value: float, **labels: str) -> Samples:
    return {(name, frozenset(labels.items())): value}


def test_quantile_interpolates_within_a_bucket_like_prometheus() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, [(0.1, 0.0), (math.inf, 10.0)]) == pytest.approx(0.1)
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_rates_are_differences_per_second_and_survive_a_restart() -> None:
    name = "quotagate_requests_total"
    before = {**sample(name, 10, endpoint="chat", decision="allowed"),
              **sample(name, 50, endpoint="chat", decision="rate_limited")}  # fmt: skip
    after = {
        **sample(name, 30, endpoint="chat", decision="allowed"),
        **sample(name, 4, endpoint="chat", decision="rate_limited"),
    }  # restarted
    found = rates(before, after, name, ("decision",), seconds=2)
    assert found == {("allowed",): 10.0, ("rate_limited",): 2.0}


def test_percentiles_cover_the_interval_only() -> None:
    name = "quotagate_upstream_duration_seconds"
    before = {**sample(name + "_bucket", 100, model="m", le="0.1"),
              **sample(name + "_bucket", 100, model="m", le="+Inf")}  # fmt: skip
    after = {**sample(name + "_bucket", 100, model="m", le="0.1"),
             **sample(name + "_bucket", 110, model="m", le="+Inf")}  # fmt: skip
    # Every request of the interval took more than 0.1 s.
    assert quantiles(before, after, name, "model", 0.5) == {"m": pytest.approx(0.1)}


def test_a_frame_renders_every_section() -> None:
    after = {
        **sample("quotagate_requests_total", 20, endpoint="chat.completions", model="gpt-4",
                 status="200", decision="allowed"),
        **sample("quotagate_tokens_total", 300, model="gpt-4", direction="completion"),
        **sample("quotagate_cost_total", 0.5, model="gpt-4"),
        **sample("quotagate_tenant_requests_total", 20, tenant="acme", decision="allowed"),
        **sample("quotagate_tenant_cost_total", 0.5, tenant="acme"),
    }  # fmt: skip
    console = Console(record=True, width=200)
    console.print(Frame({}, after, 10.0).render("http://gw"))
    text = console.export_text()
    for expected in ("chat.completions", "allowed", "2.0", "gpt-4", "30", "180.0000", "acme"):
        assert expected in text, expected
