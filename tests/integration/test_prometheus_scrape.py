"""A real Prometheus scrapes a real gateway every second, with the shipped alert rules;
scripted traffic is then answered by PromQL over Prometheus' HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from harness import Gateway, Process, free_port, policy, wait_ready

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
CHAT = "/v1/chat/completions"
T = TypeVar("T")


def start_prometheus(tmp: Path, target: str) -> Process:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not installed (apt-get install prometheus; .ci/run does)"
    shutil.copy(RULES, tmp / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "quotagate", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    process = Process(proc, log, f"http://127.0.0.1:{port}")
    try:
        wait_ready(process.base_url + "/-/ready", proc, log, timeout=60)
    except Exception:
        process.stop()
        raise
    return process


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    """Poll ``probe`` until it returns something (a scrape or a rule evaluation landed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class PromQL:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def query(self, expr: str) -> dict[str, float]:
        """An instant vector, by its labels rendered ``k=v,...``."""
        body = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", body
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in body["data"]["result"]
        }

    def rules(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.base_url}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]


@pytest.fixture
def scraped(tmp_path: Path, upstream: str) -> Iterator[tuple[Gateway, PromQL]]:
    gw = Gateway(tmp_path / "gw", policy(upstream)).start()
    prometheus = None
    try:
        prometheus = start_prometheus(tmp_path, f"127.0.0.1:{gw.port}")
        yield gw, PromQL(prometheus.base_url)
    finally:
        if prometheus is not None:
            prometheus.stop()
        gw.stop()


def test_prometheus_answers_for_scripted_traffic(scraped: tuple[Gateway, PromQL]) -> None:
    gw, promql = scraped
    eventually(lambda: promql.query('up{job="quotagate"} == 1') or None, "the first scrape")
    pro, free = gw.tenant_key("acme", "pro"), gw.tenant_key("cheap", "free")
    completion_tokens = 0
    with httpx.Client(base_url=gw.base_url, timeout=10) as client:
        for i in range(7):
            body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": f"q{i}"}]}
            reply = client.post(CHAT, json=body, headers={"authorization": f"Bearer {pro}"})
            completion_tokens += reply.json()["usage"]["completion_tokens"]
        for _ in range(3):
            body = {"model": "gpt-4", "messages": [{"role": "user", "content": "no"}]}
            refused = client.post(CHAT, json=body, headers={"authorization": f"Bearer {free}"})
            assert refused.status_code == 403

    by_decision = 'sum by (decision) (quotagate_requests_total{endpoint="chat.completions"})'
    expected = {"decision=allowed": 7.0, "decision=denied_plan": 3.0}
    eventually(
        lambda: True if promql.query(by_decision) == expected else None, "the traffic's scrape"
    )
    tokens = promql.query('sum(quotagate_tokens_total{direction="completion"})')
    assert tokens == {"": completion_tokens}
    chat = 'endpoint="chat.completions"'
    share = promql.query(
        f'sum(quotagate_requests_total{{{chat}, decision!="allowed"}})'
        f" / sum(quotagate_requests_total{{{chat}}})"
    )
    assert share[""] == pytest.approx(0.3)

    # The shipped alert rules evaluate against real series without errors.
    def evaluated() -> list[dict[str, Any]] | None:
        rules = promql.rules()
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if rules and done else None

    rules = eventually(evaluated, "the alert rules' evaluation")
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert len(rules) == sum(len(group["rules"]) for group in shipped)
    assert all(r["health"] == "ok" for r in rules), [r.get("lastError") for r in rules]
