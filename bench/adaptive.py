"""Adaptive concurrency and the batch queue, measured (issue #8's experiments):

1. A deployment capped at 8 with the adaptive limit on, in front of a mock that serves
   2 at full speed (100 ms to first token): 8 clients stream without pause. How long
   until the limit falls to <= 3, and, once the mock is given room, back to >= 7.
2. Batch traffic: 12 batch requests at once on a deployment that takes 1 at a time
   (250 ms each): how many complete, and in how long.

    .venv/bin/python bench/adaptive.py --write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from harness import Gateway, policy, start_mock  # noqa: E402
from report import record_section  # noqa: E402
from spike import ADMIN_TOKEN, issue_keys  # noqa: E402

MODEL = "gpt-3.5-turbo"


def gateway(
    tmp: Path, upstream: str, deployment: dict[str, Any], shaping: dict[str, Any]
) -> Gateway:
    doc = policy(upstream)
    doc["models"][MODEL]["deployments"][0].update({"name": "gpu-1", **deployment})
    doc["plans"]["enterprise"]["limits"] = []
    doc["shaping"] = shaping
    return Gateway(tmp, doc, {"QUOTAGATE_ADMIN_TOKEN": ADMIN_TOKEN}).start()


def limit_of(gw: Gateway) -> float:
    body = httpx.get(gw.base_url + "/readyz", timeout=5).json()
    return float(body["deployments"][MODEL]["gpu-1"]["limit"])


def adaptive(tmp: Path) -> list[str]:
    mock = start_mock(tmp)
    httpx.post(f"{mock.base_url}/_mock/faults", json={"ttft_ms": 100, "capacity": 2}, timeout=5)
    gw = gateway(tmp / "gw", mock.base_url + "/v1", {"max_concurrency": 8}, {
        "adaptive": {"min": 1, "max": 8, "initial": 8, "interval": "200ms",
                     "target_ttft": "250ms", "target_tpot": "1s"},
        "queue": {"max_wait": {"interactive": "10s"}},
    })  # fmt: skip
    stop = threading.Event()
    timeline: list[tuple[float, float]] = []
    try:
        bearer = {"authorization": f"Bearer {issue_keys(gw, 'enterprise', 1)[0]}"}
        body = {"model": MODEL, "stream": True, "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip

        def client() -> None:
            while not stop.is_set():
                with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=body,
                                  headers=bearer, timeout=30) as r:  # fmt: skip
                    r.read()

        threads = [threading.Thread(target=client) for _ in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        eased = fell = recovered = None
        while time.monotonic() - started < 30 and recovered is None:
            now, limit = time.monotonic() - started, limit_of(gw)
            timeline.append((now, limit))
            if fell is None and limit <= 3:
                fell = now
                httpx.post(f"{mock.base_url}/_mock/faults", json={"capacity": 100}, timeout=5)
                eased = time.monotonic() - started
            elif eased is not None and limit >= 7:
                recovered = now
            time.sleep(0.1)  # sampling interval
        stop.set()
        for t in threads:
            t.join(30)
        peak = httpx.get(f"{mock.base_url}/_mock/load", timeout=5).json()["peak_in_flight"]
    finally:
        stop.set()
        gw.stop()
        mock.stop()
    trace = ", ".join(f"{t:.1f}s:{limit:g}" for t, limit in timeline[::5])
    return [
        "**Adaptive limit** (8 streaming clients; mock capacity 2, 100 ms to first token; "
        "target TTFT 250 ms; 200 ms steps):",
        "",
        f"- fell from 8 to <= 3 after **{fell:.1f} s**" if fell is not None else "- never fell",
        f"- recovered to >= 7 **{recovered - eased:.1f} s** after the mock was given room"
        if recovered is not None and eased is not None
        else "- did not recover in 30 s",
        f"- the mock's peak concurrency: {peak}",
        f"- limit over time (every 0.5 s): {trace}",
    ]


def batch(tmp: Path) -> list[str]:
    mock = start_mock(tmp)
    httpx.post(f"{mock.base_url}/_mock/faults", json={"ttft_ms": 250}, timeout=5)
    gw = gateway(tmp / "gw2", mock.base_url + "/v1", {"max_concurrency": 1},
                 {"queue": {"max_wait": {"interactive": "300ms", "batch": "60s"}}})  # fmt: skip
    try:
        bearer = {"authorization": f"Bearer {issue_keys(gw, 'enterprise', 1)[0]}"}
        body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        statuses: dict[str, list[int]] = {"batch": [], "interactive": []}

        def one(cls: str) -> None:
            r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=60,
                           headers={**bearer, "x-quotagate-class": cls})  # fmt: skip
            statuses[cls].append(r.status_code)

        started = time.monotonic()
        threads = [threading.Thread(target=one, args=("batch",)) for _ in range(12)]
        threads += [threading.Thread(target=one, args=("interactive",)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        took = time.monotonic() - started
    finally:
        gw.stop()
        mock.stop()
    b, i = statuses["batch"], statuses["interactive"]
    return [
        "**Batch queue** (12 batch + 12 interactive requests at once; 1 slot, 250 ms each; "
        "max wait: interactive 300 ms, batch 60 s):",
        "",
        f"- batch: {b.count(200)}/12 completed, all within {took:.1f} s",
        f"- interactive: {i.count(200)} served, {i.count(503)} shed with 503 after 300 ms",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qg-adaptive-") as tmp:
        lines = [*adaptive(Path(tmp)), "", *batch(Path(tmp))]
    body = "\n".join(lines)
    print(body)
    if args.write:
        record_section(
            "adaptive", "Adaptive concurrency and the batch queue",
            ".venv/bin/python bench/adaptive.py --write", body,
        )  # fmt: skip


if __name__ == "__main__":
    main()
