"""The spike experiment at length (tests/spike.py): steady enterprise traffic alone,
then beside a flood of 10x the upstream's capacity from free keys and one address.
Prints enterprise's success and latency in both, what happened to the flood, and the
upstream's peak concurrency; ``--write`` records it in bench/RESULTS.md.

    .venv/bin/python bench/flood.py --seconds 20 --write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from report import record_section  # noqa: E402
from spike import CAPACITY, SERVICE_MS, run_spike  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase's length")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qg-flood-") as tmp:
        spike = run_spike(Path(tmp), args.seconds)
    alone, ent = spike.unloaded, spike.loaded["enterprise"]
    rows = [
        "| traffic | sent | 200 | 429 | 503 | other | p50 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, o in [("enterprise alone", alone), *spike.loaded.items()]:
        other = o.sent - o.statuses[200] - o.statuses[429] - o.statuses[503]
        latency = (
            f"{o.percentile(0.5) * 1000:.0f} ms | {o.percentile(0.99) * 1000:.0f} ms"
            if o.latencies else "— | —"
        )  # fmt: skip
        rows.append(
            f"| {name} | {o.sent} | {o.statuses[200]} | {o.statuses[429]} | {o.statuses[503]} "
            f"| {other} | {latency} |"
        )
    ratio = ent.percentile(0.99) / alone.percentile(0.99) if alone.latencies else 0.0
    body = "\n".join([
        f"Upstream: the mock LLM with {CAPACITY} slots of {SERVICE_MS} ms "
        f"({CAPACITY * 1000 // SERVICE_MS} req/s); the deployment's max_concurrency "
        f"{CAPACITY}, one slot reserved for priority 10. Enterprise: 10 req/s from its own "
        "process; the flood (8 free keys x 40 req/s, one address x 480 req/s: 800 req/s, "
        f"10x the upstream) from another. {args.seconds:g} s per phase.",
        "",
        *rows,
        "",
        f"- Enterprise success under the flood: **{ent.success * 100:.2f}%** "
        f"(target >= 99.95%: {'met' if ent.success >= 0.9995 else 'NOT met'})",
        f"- Enterprise p99 under the flood / alone: **{ratio:.2f}x** "
        f"(target <= 2x: {'met' if 0 < ratio <= 2 else 'NOT met'})",
        f"- Upstream peak concurrency: {spike.peak_in_flight} (capacity {CAPACITY}: "
        f"{'never exceeded' if spike.peak_in_flight <= CAPACITY else 'EXCEEDED'})",
        f"- Refused before authentication (ip_guard): {spike.preauth_refused:.0f}",
    ])  # fmt: skip
    print(body)
    if args.write:
        record_section(
            "flood", "Spike: enterprise beside a 10x flood",
            f".venv/bin/python bench/flood.py --seconds {args.seconds:g} --write", body,
        )  # fmt: skip


if __name__ == "__main__":
    main()
