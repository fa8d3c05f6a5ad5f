"""Who used the two cores during a run: the processes under test, the load generator,
and everything else on the machine (noise).

CPU time per process comes from /proc/<pid>/stat, the load generator's from this
process's reaped children, each core's busy time from /proc/stat.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from processes import Child

PROXY_CORE, LOAD_CORE = 0, 1  # the proxy under test | the mock upstream and the load
NOISY_PCT = 15.0  # other processes above this (% of one core) on either core: noisy
_TICKS = os.sysconf("SC_CLK_TCK")
_QUIET_WINDOW_S = 2.0
_QUIET_WINDOWS = 5  # in a row: a gap between two bursts of someone's tests is not quiet
T = TypeVar("T")


def core_busy_seconds() -> dict[int, float]:
    """CPU-seconds each core has run tasks (user, nice, system) or lost to other guests
    (steal) since boot, from /proc/stat. Interrupt time is left out: it is mostly the
    loopback traffic of the run itself, which no process's own CPU time includes."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, values[:8])
            busy[int(name[3:])] = (user + nice + system + steal) / _TICKS
    return busy


def measure_cpu(watched: list[Child], run: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """Run the load; return it with the CPU each watched process and the load generator
    used, and what everything else took on each of the two cores, in % of one core.
    Whichever of the proxy or core 1 (mock + load) sits near 100% was the bottleneck;
    "other" is noise from the rest of the machine."""
    before = [child.cpu_seconds() for child in watched]
    load_before, busy_before = _children_cpu(), core_busy_seconds()
    started = time.monotonic()
    result = run()
    wall = time.monotonic() - started
    busy_after = core_busy_seconds()
    used = {c.name: c.cpu_seconds() - b for c, b in zip(watched, before, strict=True)}
    used["load"] = _children_cpu() - load_before
    for core in (PROXY_CORE, LOAD_CORE):
        ours = sum(used[c.name] for c in watched if c.core == core)
        ours += used["load"] if core == LOAD_CORE else 0.0
        busy = busy_after.get(core, 0.0) - busy_before.get(core, 0.0)
        used[f"other core {core}"] = max(0.0, busy - ours)
    return result, {name: 100 * seconds / wall for name, seconds in used.items()}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(patience: float) -> None:
    """Wait (up to ``patience`` s) until other processes have left both cores idle for
    a while; a benchmark on a busy machine measures the machine."""
    deadline = time.monotonic() + patience
    quiet = 0
    while quiet < _QUIET_WINDOWS:
        busy = _busy_now()
        quiet = quiet + 1 if max(busy.values()) <= NOISY_PCT else 0
        cores = f"core 0 {busy[PROXY_CORE]:.0f}%, core 1 {busy[LOAD_CORE]:.0f}%"
        if quiet == 0 and time.monotonic() >= deadline:
            _say(f"warning: the machine is busy ({cores}); the runs will be noisy")
            return
        if quiet == 0:
            _say(f"waiting for a quiet machine: {cores} busy")


def _busy_now() -> dict[int, float]:
    """How busy each core was over the next window, in %."""
    before = core_busy_seconds()
    time.sleep(_QUIET_WINDOW_S)
    after = core_busy_seconds()
    return {
        core: 100 * (after.get(core, 0) - before.get(core, 0)) / _QUIET_WINDOW_S
        for core in (PROXY_CORE, LOAD_CORE)
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
