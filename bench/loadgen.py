"""The load generators: wrk at saturation, and paced wrk (or hey) at a fixed rate.

All are pinned to the upstream's core, so the proxy under test has its core to itself.
A run that saw any non-2xx answer or socket error, or that fell short of its asked
rate, is marked invalid: its numbers are not a throughput or a latency of the path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from processes import pinned

LUA = Path(__file__).with_name("chat.lua")
_WRK_JSON = re.compile(r"^QG_BENCH_JSON (\{.*\})$", re.M)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_HEY_RPS = re.compile(r"Requests/sec:\s*([\d.]+)")
_HEY_PCT = re.compile(r"^\s*(\d+)%+ in ([\d.]+) secs", re.M)
_HEY_STATUS = re.compile(r"^\s*\[(\d+)\]\s+(\d+) responses", re.M)
_HEY_ERRORS = re.compile(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)")
_RATE_SLACK = 0.95  # a fixed-rate run must reach this share of the asked rate


def require_tools(fixed_tool: str) -> None:
    tools = ("wrk", "taskset", *(("hey",) if fixed_tool == "hey" else ()))
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"bench: missing {', '.join(missing)}; install with `apt-get install wrk hey` "
            "(taskset is in util-linux)"
        )


@dataclass(frozen=True)
class Load:
    """What every load generator sends: the same request to each target."""

    key: str
    body: str
    core: int


@dataclass
class Run:
    """One measured run. ``asked_rps`` is None at saturation."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    asked_rps: float | None = None
    errors: list[str] = field(default_factory=list)  # non-2xx, socket errors: never hidden
    shortfall: str = ""  # a fixed-rate run that did not reach its rate

    @property
    def problems(self) -> list[str]:
        return [*self.errors, *([self.shortfall] if self.shortfall else [])]

    @property
    def valid(self) -> bool:
        return not self.problems


def run_wrk(
    url: str, load: Load, connections: int, duration: float, rate: float | None = None
) -> Run:
    """wrk with chat.lua; with ``rate``, paced by chat.lua's delay() (one thread)."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(LUA)]
    env = {**os.environ, "QG_BENCH_KEY": load.key, "QG_BENCH_BODY": load.body}
    if rate is not None:
        env["QG_BENCH_RATE"] = f"{rate:.3f}"
    out = _run(pinned(load.core, [*args, url]), env, duration)
    match = _WRK_JSON.search(out)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    s = json.loads(match.group(1))
    problems = []
    non2xx = max([s["status"], *(int(n) for n in _WRK_NON2XX.findall(out))])
    if non2xx:
        problems.append(f"{non2xx} non-2xx responses")
    if s["connect"] + s["read"] + s["write"] + s["timeout"]:
        problems.append(
            f"socket errors: connect {s['connect']}, read {s['read']}, "
            f"write {s['write']}, timeout {s['timeout']}"
        )
    rps = s["requests"] / (s["duration_us"] / 1e6)
    return _checked(Run(rps, s["p50_us"] / 1000, s["p99_us"] / 1000, s["requests"], rate, problems))


def run_hey(url: str, load: Load, workers: int, duration: float, rate: float) -> Run:
    """hey at ``rate`` total req/s over ``workers`` (hey's ``-q`` is per worker).

    hey reports latency to 0.1 ms, and its workers tick in step (bursts of ``workers``
    requests): kept as a cross-check of the paced wrk runs."""
    cmd = [
        "hey", "-z", f"{duration:g}s", "-c", str(workers), "-q", f"{rate / workers:.3f}",
        "-m", "POST", "-T", "application/json", "-H", f"Authorization: Bearer {load.key}",
        "-d", load.body, url,
    ]  # fmt: skip
    out = _run(pinned(load.core, cmd), dict(os.environ), duration)
    percentiles = {int(p): float(s) * 1000 for p, s in _HEY_PCT.findall(out)}
    statuses = {int(code): int(n) for code, n in _HEY_STATUS.findall(out)}
    rps_match = _HEY_RPS.search(out)
    if rps_match is None or 50 not in percentiles or 99 not in percentiles:
        raise RuntimeError(f"hey printed no latency distribution:\n{out}")
    problems = []
    bad = {code: n for code, n in statuses.items() if not 200 <= code < 300}
    if bad:
        problems.append(f"non-2xx responses {bad}")
    if errors := _HEY_ERRORS.search(out):
        problems.append("errors: " + " ".join(errors.group(1).split())[:300])
    run = Run(float(rps_match.group(1)), percentiles[50], percentiles[99],
              sum(statuses.values()), rate, problems)  # fmt: skip
    return _checked(run)


def _checked(run: Run) -> Run:
    if run.requests == 0:
        run.errors.append("no requests completed")
    if run.asked_rps is not None and run.rps < _RATE_SLACK * run.asked_rps:
        run.shortfall = f"rate not held: {run.rps:,.0f} of {run.asked_rps:,.0f} req/s"
    return run


def _run(cmd: list[str], env: dict[str, str], duration: float) -> str:
    result = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if result.returncode != 0:
        tool = cmd[3]  # after "taskset -c N"
        raise RuntimeError(f"{tool} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result.stdout


def add_load_options(p: argparse.ArgumentParser, default_rate: str) -> None:
    """The load options every benchmark command shares."""
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3, help="seconds of warm-up before each")
    p.add_argument("--repeat", type=int, default=1, help="measured runs each; the best is kept")
    p.add_argument("--connections", type=int, default=32, help="wrk connections, saturation")
    p.add_argument("--rate", type=float, help=f"fixed rate, req/s (default: {default_rate})")
    p.add_argument("--skip-fixed-rate", action="store_true", help="saturation runs only")
    p.add_argument("--fixed-connections", type=int, default=128, help="paced wrk connections")
    p.add_argument(
        "--wait-quiet", type=float, default=0, metavar="SECONDS",
        help="wait up to this long for cores 0 and 1 to be idle before starting",
    )  # fmt: skip
    p.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
