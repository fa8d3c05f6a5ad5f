"""``quotagate top``: a live view of a gateway, computed from two scrapes of ``/metrics``.

Rates are differences between successive scrapes divided by the time between them;
percentiles come from the histogram buckets' differences, interpolated within a bucket
as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _increase(before: float, after: float) -> float:
    """A counter that went down was reset (the gateway restarted): it counted from 0."""
    return after - before if after >= before else after


def rates(
    before: Samples, after: Samples, name: str, by: tuple[str, ...], seconds: float
) -> dict[tuple[str, ...], float]:
    """Per second increase of ``name`` between the scrapes, summed by the ``by`` labels."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (metric, labels), value in after.items():
        if metric == name:
            grown = _increase(before.get((metric, labels), 0.0), value)
            d = dict(labels)
            out[tuple(d.get(label, "") for label in by)] += grown / seconds
    return dict(out)


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` over cumulative (upper bound, count) pairs."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def quantiles(
    before: Samples, after: Samples, name: str, by: str, q: float
) -> dict[str, float | None]:
    """The ``q`` quantile of ``name`` (a histogram) over the interval, by one label."""
    grouped: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (metric, labels), value in after.items():
        if metric == name + "_bucket":
            d = dict(labels)
            grown = _increase(before.get((metric, labels), 0.0), value)
            grouped[d.get(by, "")][float(d["le"])] += grown
    return {key: quantile(q, b.items()) for key, b in grouped.items()}


@dataclass(frozen=True)
class Frame:
    before: Samples
    after: Samples
    seconds: float

    def requests(self) -> Table:
        table = Table("endpoint", "decision", "req/s", title="Requests")
        found = rates(self.before, self.after, "quotagate_requests_total",
                      ("endpoint", "decision"), self.seconds)  # fmt: skip
        for (endpoint, decision), rate in sorted(found.items(), key=lambda kv: -kv[1]):
            table.add_row(endpoint, decision, f"{rate:,.1f}")
        return table

    def latency(self) -> Table:
        table = Table("", "p50", "p95", title="Latency (ms)")
        for title, metric, label in (
            ("request", "quotagate_request_duration_seconds", "endpoint"),
            ("upstream", "quotagate_upstream_duration_seconds", "model"),
            ("first token", "quotagate_time_to_first_token_seconds", "model"),
            ("overhead", "quotagate_gateway_overhead_seconds", "endpoint"),
        ):
            p50 = quantiles(self.before, self.after, metric, label, 0.5)
            p95 = quantiles(self.before, self.after, metric, label, 0.95)
            for key in sorted(k for k, v in p50.items() if v is not None):
                table.add_row(f"{title} {key}", _ms(p50[key]), _ms(p95.get(key)))
        return table

    def models(self) -> Table:
        table = Table("model", "prompt tok/s", "completion tok/s", "cost/h", title="Models")
        tokens = rates(self.before, self.after, "quotagate_tokens_total",
                       ("model", "direction"), self.seconds)  # fmt: skip
        cost = rates(self.before, self.after, "quotagate_cost_total", ("model",), self.seconds)
        for model in sorted({m for m, _ in tokens} | {m for (m,) in cost}):
            table.add_row(
                model,
                f"{tokens.get((model, 'prompt'), 0):,.0f}",
                f"{tokens.get((model, 'completion'), 0):,.0f}",
                f"{cost.get((model,), 0) * 3600:,.4f}",
            )
        return table

    def tenants(self, top: int = 10) -> Table:
        table = Table("tenant", "req/s", "cost/h", title=f"Top {top} tenants by spend")
        cost = rates(self.before, self.after, "quotagate_tenant_cost_total", ("tenant",),
                     self.seconds)  # fmt: skip
        requests = rates(self.before, self.after, "quotagate_tenant_requests_total",
                         ("tenant",), self.seconds)  # fmt: skip
        ranked = sorted(requests, key=lambda t: (-cost.get(t, 0), -requests[t]))[:top]
        for (tenant,) in ranked:
            table.add_row(
                tenant, f"{requests[(tenant,)]:,.1f}", f"{cost.get((tenant,), 0) * 3600:,.4f}"
            )
        return table

    def render(self, url: str) -> Group:
        title = f"quotagate top — {url} — over the last {self.seconds:.1f}s"
        return Group(title, self.requests(), self.latency(), self.models(), self.tenants())


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def frames(url: str, interval: float) -> Iterable[Frame]:
    """A frame every ``interval`` seconds, each over the interval just ended."""
    before, at = scrape(url), time.monotonic()
    while True:
        time.sleep(interval)
        after, now = scrape(url), time.monotonic()
        yield Frame(before, after, now - at)
        before, at = after, now
