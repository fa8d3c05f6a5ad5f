"""``serve --workers N``: processes share the port and, through Redis, the counters."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import yaml

from harness import QUOTAGATE, SHARED_REDIS, Gateway, policy, redis_prefix
from metrics_text import scrape, total

T = TypeVar("T")
BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


def test_memory_store_refuses_several_workers(tmp_path: Path, upstream: str) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(policy(upstream)))
    result = subprocess.run(
        [*QUOTAGATE, "serve", "--config", str(config), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--workers > 1 needs a shared store" in result.stderr


def test_two_workers_share_exact_limits(tmp_path: Path, upstream: str) -> None:
    doc = policy(upstream)
    doc["store"] = {"url": SHARED_REDIS, "prefix": redis_prefix(),
                    "timeout": "5s"}  # fmt: skip
    doc["plans"]["free"]["limits"] = [
        {"scope": "key", "requests": 50, "per": "1m", "algorithm": "sliding_window"}
    ]
    gw = Gateway(tmp_path, doc).start("--workers", "2")
    try:
        key = gw.tenant_key("acme", "free")

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                headers = {"authorization": f"Bearer {key}"}
                url = gw.base_url + "/v1/chat/completions"
                responses = await asyncio.gather(
                    *(client.post(url, json=BODY, headers=headers) for _ in range(200))
                )
                return [r.status_code for r in responses]

        statuses = asyncio.run(burst())
        assert statuses.count(200) == 50 and statuses.count(429) == 150
    finally:
        gw.stop()


@pytest.mark.parametrize("metrics_dir_given", [True, False], ids=["operator_dir", "temporary_dir"])
def test_two_workers_answer_metrics_and_log_for_both(
    tmp_path: Path, upstream: str, metrics_dir_given: bool
) -> None:
    doc = policy(upstream)
    doc["store"] = {"url": SHARED_REDIS, "prefix": redis_prefix(),
                    "timeout": "5s"}  # fmt: skip
    access_log = tmp_path / "access.log"
    doc["observability"] = {"access_log": {"path": str(access_log), "flush_interval": "50ms"}}
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()  # prometheus-client needs it before it is imported
    # Without one, `serve --workers` makes a temporary directory of its own.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)} if metrics_dir_given else {}
    gw = Gateway(tmp_path, doc, env).start("--workers", "2")
    try:
        key = gw.tenant_key("acme", "pro")

        async def traffic() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                headers = {"authorization": f"Bearer {key}"}
                url = gw.base_url + "/v1/chat/completions"
                responses = await asyncio.gather(
                    *(client.post(url, json=BODY, headers=headers) for _ in range(40))
                )
                assert all(r.status_code == 200 for r in responses)

        asyncio.run(traffic())
        # Both workers served (each keeps its own counter file), and whichever worker
        # answers /metrics counts all 40.
        if metrics_dir_given:
            workers = {p.name for p in metrics_dir.glob("counter_*.db")}
            assert len(workers) >= 2, workers
        served = {"endpoint": "chat.completions", "status": "200", "decision": "allowed"}
        for _ in range(6):
            samples = scrape(gw.base_url)
            assert total(samples, "quotagate_requests_total", **served) == 40
            assert total(samples, "quotagate_upstream_duration_seconds_count") == 40
            store = {"operation": "acquire"}  # a Redis store: its calls are timed
            assert total(samples, "quotagate_store_duration_seconds_count", **store) == 40
        lines = wait_for_lines(access_log, 40)
        assert len({json.loads(line)["request_id"] for line in lines}) == 40
    finally:
        gw.stop()


def wait_for_lines(path: Path, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} access-log lines in {timeout}s")


def test_replaced_workers_stop_counting_in_live_gauges(tmp_path: Path, upstream: str) -> None:
    doc = policy(upstream)
    doc["store"] = {"url": SHARED_REDIS, "prefix": redis_prefix()}
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    gw = Gateway(tmp_path, doc, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    gw.start("--workers", "2")
    try:

        def live_gauge_files(unlike: set[str]) -> set[str] | None:
            """The workers' live-gauge files, once there are two and none in ``unlike``."""
            files = {p.name for p in metrics_dir.glob("gauge_livesum_*.db")}
            return files if len(files) >= 2 and not files & unlike else None

        first = wait_for(lambda: live_gauge_files(set()))
        assert gw.process is not None
        gw.process.proc.send_signal(signal.SIGHUP)  # the supervisor replaces its workers
        replaced = wait_for(lambda: live_gauge_files(first))
        assert len(replaced) == 2  # the old workers' files are gone, not summed with these
        assert total(scrape(gw.base_url), "quotagate_ledger_queue_depth") == 0
    finally:
        gw.stop()


def wait_for(probe: Callable[[], T | None], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s")
