"""Where /metrics is served, and what ``observability.metrics`` switches off."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2e_clients import CHAT_MODEL, IssuedKey, messages, sdk
from prometheus_client.parser import text_string_to_metric_families

from harness import Gateway, policy


def requests_total(text: str) -> float:
    """Chat completions counted in ``quotagate_requests_total``."""
    for family in text_string_to_metric_families(text):
        if family.name == "quotagate_requests":
            return sum(
                s.value for s in family.samples
                if s.name.endswith("_total") and s.labels["endpoint"] == "chat.completions"
            )  # fmt: skip
    return 0.0


def test_the_admin_listener_serves_metrics_too(gateway: Gateway, pro_key: IssuedKey) -> None:
    before = requests_total(httpx.get(gateway.admin_url + "/metrics", timeout=10).text)
    sdk(gateway, pro_key.key).chat.completions.create(model=CHAT_MODEL, messages=messages("m"))
    admin = httpx.get(gateway.admin_url + "/metrics", timeout=10)
    assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/plain")
    assert requests_total(admin.text) >= before + 1
    public = httpx.get(gateway.base_url + "/metrics", timeout=10)
    assert public.status_code == 200  # the default: on both listeners


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    doc = policy(upstream)
    doc["observability"] = {"metrics": {"public": False, "enabled": False}}
    gw = Gateway(tmp_path_factory.mktemp("private-metrics"), doc).start()
    yield gw
    gw.stop()


def test_metrics_can_leave_the_public_listener_and_the_request_path(private: Gateway) -> None:
    key = private.tenant_key("quiet", "pro")
    sdk(private, key).chat.completions.create(model=CHAT_MODEL, messages=messages("m"))
    assert httpx.get(private.base_url + "/metrics", timeout=10).status_code == 404
    admin = httpx.get(private.admin_url + "/metrics", timeout=10)
    assert admin.status_code == 200
    assert requests_total(admin.text) == 0  # per-request series off
    assert "quotagate_store_circuit_open" in admin.text  # the rest still exported
