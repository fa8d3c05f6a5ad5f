"""The spike scenario: the mock LLM is made small (4 requests at once, 100 ms each);
pro keys flood gpt-3.5-turbo far beyond it while an enterprise key sends steadily."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from rich.table import Table

from .flood import Stream, flood
from .stage import Stage

SECONDS = 4.0


def _mock_faults(url: str, **settings: float) -> None:
    request = urllib.request.Request(
        url + "/_mock/faults", data=json.dumps(settings).encode(), method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5):
        pass


def _peak(url: str) -> int:
    with urllib.request.urlopen(url + "/_mock/load", timeout=5) as resp:
        return int(json.loads(resp.read())["peak_in_flight"])


def traffic_spike(stage: Stage) -> None:
    _mock_faults(stage.mock, capacity=4, ttft_ms=100)
    try:
        stage.operator.create_tenant("demo-spike-pro", "pro")
        pros = [stage.operator.create_key("demo-spike-pro", "pro") for _ in range(4)]
        streams = [Stream("pro (flood)", a.key, "", 25) for a in pros]
        streams.append(Stream("enterprise", stage.accounts["enterprise"].key, "", 5))
        with stage.console.status(f"flooding for {SECONDS:g}s…"):
            outcomes = asyncio.run(flood(stage.gateway_url, streams, SECONDS))
        peak = _peak(stage.mock)
    finally:
        _mock_faults(stage.mock, capacity=0, ttft_ms=0)
    table = Table("traffic", "sent", "200", "429", "503", "p50", "p99", title="during the spike")
    for name, o in outcomes.items():
        table.add_row(
            name, str(o.sent), str(o.statuses[200]), str(o.statuses[429]), str(o.statuses[503]),
            f"{o.percentile(0.5) * 1000:.0f} ms", f"{o.percentile(0.99) * 1000:.0f} ms",
        )  # fmt: skip
    stage.console.print(table)
    stage.console.print(f"the mock had at most {peak} requests at once (the deployment's cap: 8)")
    ent, pro = outcomes["enterprise"], outcomes["pro (flood)"]
    stage.expect(ent.success == 1.0, f"enterprise saw errors: {dict(ent.statuses)}")
    stage.expect(pro.statuses[503] > 0, "the flood was never shed")
    stage.expect(peak <= 8, f"the upstream had {peak} requests at once")
