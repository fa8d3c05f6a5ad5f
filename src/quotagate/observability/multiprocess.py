"""Metrics across worker processes (``serve --workers N``).

prometheus-client's multiprocess mode: each worker keeps its values in files under
``PROMETHEUS_MULTIPROC_DIR`` (chosen when ``prometheus_client`` is first imported, so
the supervisor sets it before it spawns workers), and ``/metrics`` of whichever
worker answers reads them all. Counters and histograms are summed over workers, the
ledger queue gauge over live ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_registry() -> CollectorRegistry:
    """What ``/metrics`` exposes: this process's registry, or every worker's."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


@contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the workers about to start: the operator's
    directory (emptied: values of an earlier run must not be added in), else a fresh
    temporary one, removed afterwards."""
    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="quotagate-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def forget_workers(pids: set[int]) -> None:
    """Workers that exited: their live gauges (the ledger queue) must stop counting.
    Their counters and histograms stay, as the totals they contributed."""
    if os.environ.get(MULTIPROC_ENV):
        for pid in pids:
            mark_process_dead(pid)  # type: ignore[no-untyped-call]
