"""deploy/: the Prometheus config and alert rules (checked and unit-tested by promtool)
and the Grafana dashboard (every expression names only metrics the gateway exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import quotagate.observability.metrics  # noqa: F401  (declares every metric)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
METRIC_NAME = re.compile(r"\b(quotagate_[a-z0-9_]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every sample name quotagate's metrics produce (labelled or not yet observed)."""
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("quotagate_"):
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool not installed (apt-get install prometheus; .ci/run does)"
    return subprocess.run([tool, *args], cwd=PROMETHEUS, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_every_metric_has_the_prefix_and_bounded_labels() -> None:
    families = [f for f in REGISTRY.collect() if f.name.startswith("quotagate_")]
    assert len(families) >= 20
    for collector in list(REGISTRY._names_to_collectors.values()):
        labels = getattr(collector, "_labelnames", ())
        assert "key" not in labels and "key_id" not in labels and "user" not in labels


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def rule_expressions() -> list[str]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads((DEPLOY / "grafana" / "quotagate.json").read_text())
    panels = dashboard["panels"]
    assert panels and all(panel["targets"] for panel in panels)
    return [target["expr"] for panel in panels for target in panel["targets"]]


@pytest.mark.parametrize("source", [rule_expressions, dashboard_expressions])
def test_expressions_use_only_exported_metrics(source: Any) -> None:
    exported = exported_names()
    expressions = source()
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used, "no quotagate metric referenced"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_dashboard_covers_the_issue_panels() -> None:
    text = " ".join(dashboard_expressions())
    for metric in (
        "quotagate_requests_total", "quotagate_request_duration_seconds_bucket",
        "quotagate_tokens_total", "quotagate_cost_total", "quotagate_tenant_cost_total",
        "quotagate_upstream_duration_seconds_bucket", "quotagate_gateway_overhead_seconds_bucket",
    ):  # fmt: skip
        assert metric in text, metric
