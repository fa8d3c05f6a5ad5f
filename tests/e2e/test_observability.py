"""Metrics and the access log of a real gateway process after scripted traffic."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e_clients import CHAT_MODEL, IssuedKey, KeyIssuer, MockUpstream, messages, sdk

from harness import QUOTAGATE, Gateway, policy
from metrics_text import delta, label_values, scrape
from quotagate.observability.metrics import DECISIONS

MAX_TENANTS = 2
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
PRICES = {CHAT_MODEL: (500_000, 1_500_000)}  # micro-units per 1M input / output tokens


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("observed")
    doc = policy(upstream)
    doc["observability"] = {
        "access_log": {"path": str(tmp / "access.log"), "flush_interval": "50ms"},
        "metrics": {"tenant_labels": True, "max_tenants": MAX_TENANTS},
    }
    gw = Gateway(tmp, doc).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def observed_keys(observed: Gateway) -> KeyIssuer:
    return KeyIssuer(observed)


def access_log(gw: Gateway) -> Path:
    return gw.tmp / "access.log"


def log_lines(gw: Gateway) -> list[str]:
    path = access_log(gw)
    return path.read_text().splitlines() if path.exists() else []


def wait_for_line(gw: Gateway, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The access-log entry of ``request_id``, once the gateway has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines(gw):
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return dict(entry)
        time.sleep(0.02)
    raise AssertionError(f"no access-log line for {request_id} in {timeout}s")


def cost_micros(model: str, prompt: int, completion: int) -> int:
    price_in, price_out = PRICES[model]
    return -(-(prompt * price_in + completion * price_out) // 1_000_000)


def test_metrics_follow_scripted_traffic(observed: Gateway, observed_keys: KeyIssuer) -> None:
    pro, free = observed_keys.shared("pro"), observed_keys.shared("free")
    before = scrape(observed.base_url)
    usages: list[tuple[int, int]] = []
    with sdk(observed, pro.key) as client:
        for i in range(3):
            reply = client.chat.completions.create(model=CHAT_MODEL, messages=messages(f"q{i}"))
            assert reply.usage is not None
            usages.append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
        for i in range(2):
            chunks = list(
                client.chat.completions.create(
                    model=CHAT_MODEL, messages=messages(f"s{i}"), stream=True,
                    stream_options={"include_usage": True},
                )
            )  # fmt: skip
            final = chunks[-1].usage
            assert final is not None
            usages.append((final.prompt_tokens, final.completion_tokens))
    with sdk(observed, free.key) as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4", messages=messages("not on free"))
    after = scrape(observed.base_url)

    chat = {"endpoint": "chat.completions"}
    served = {**chat, "model": CHAT_MODEL, "status": "200", "decision": "allowed"}
    assert delta(before, after, "quotagate_requests_total", **served) == 5
    denied = {**chat, "status": "403", "decision": "denied_plan"}
    assert delta(before, after, "quotagate_requests_total", **denied) == 1
    prompt, completion = sum(u[0] for u in usages), sum(u[1] for u in usages)
    by_model = {"model": CHAT_MODEL}
    tokens = "quotagate_tokens_total"
    assert delta(before, after, tokens, **by_model, direction="prompt") == prompt
    assert delta(before, after, tokens, **by_model, direction="completion") == completion
    cost = sum(cost_micros(CHAT_MODEL, p, c) for p, c in usages) / 1_000_000
    assert delta(before, after, "quotagate_cost_total", **by_model) == pytest.approx(cost)
    upstream = "quotagate_upstream_duration_seconds_count"
    assert delta(before, after, upstream, **by_model) == 5
    first_token = "quotagate_time_to_first_token_seconds_count"
    assert delta(before, after, first_token, **by_model) == 2  # streams only
    assert delta(before, after, "quotagate_gateway_overhead_seconds_count", **chat) == 5
    assert label_values(after, "quotagate_requests_total", "decision") <= DECISIONS


def test_tenant_series_are_capped(observed: Gateway) -> None:
    keys = [observed.tenant_key(f"capped-{i}", "pro") for i in range(MAX_TENANTS + 2)]
    for key in keys:
        with sdk(observed, key) as client:
            client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi"))
    after = scrape(observed.base_url)
    tenants = label_values(after, "quotagate_tenant_requests_total", "tenant")
    assert len(tenants) == MAX_TENANTS + 1 and "other" in tenants
    assert delta({}, after, "quotagate_tenant_requests_total", tenant="other") >= 2
    assert delta({}, after, "quotagate_tenant_cost_total", tenant="other") > 0
    assert label_values(after, "quotagate_tenant_tokens_total", "tenant") <= tenants


def every_header(key: str) -> dict[str, str]:
    """The key in every header a client might put it in, by design or by mistake."""
    return {
        "authorization": f"Bearer {key}",
        "x-api-key": key,
        "api-key": key,
        "proxy-authorization": f"Bearer {key}",
        "cookie": f"session={key}",
        "x-request-id": key,
        "user-agent": key,
        "x-forwarded-for": key,
        "openai-organization": key,
        "traceparent": TRACEPARENT,
        "tracestate": f"vendor={key}",
    }


def test_admin_api_requests_are_in_the_access_log_without_their_token(
    observed: Gateway,
) -> None:
    token = str(json.loads(observed.cli("admin-tokens", "create", "auditor", "--json"))["token"])
    forged = token[:-6] + "forged"
    with httpx.Client(base_url=observed.admin_url, timeout=10) as admin:
        ok = admin.get("/admin/v1/tenants", headers={"authorization": f"Bearer {token}"})
        refused = admin.get("/admin/v1/tenants", headers={"authorization": f"Bearer {forged}"})
        scraped = admin.get("/metrics")  # scrapes are counted, not logged
    assert (ok.status_code, refused.status_code, scraped.status_code) == (200, 401, 200)
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in log_lines(observed)]
        admin_entries = [e for e in entries if e["endpoint"] == "admin"]
        if len(admin_entries) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert all(e["path"].startswith("/admin/") for e in admin_entries), admin_entries
    by_status = {e["status"]: e for e in admin_entries if e["path"] == "/admin/v1/tenants"}
    assert set(by_status) == {200, 401}, admin_entries
    assert by_status[200]["actor"] == "token:auditor" and by_status[401]["actor"] is None
    for entry in by_status.values():
        assert entry["method"] == "GET" and entry["client_ip"] == "127.0.0.1"
        assert entry["request_id"].startswith("adm_") and entry["latency_ms"] > 0
    text = access_log(observed).read_text()
    assert token not in text and forged not in text and token.split("_")[-1] not in text


def test_access_log_has_every_field_and_no_secret(
    observed: Gateway, observed_keys: KeyIssuer, upstream: str
) -> None:
    key = observed_keys.issue("pro")
    forged = IssuedKey(key.key_id, f"qg-{key.key_id}_forgedsecretforgedsecretforgedsecret00")
    body = {"model": CHAT_MODEL, "messages": messages("log me")}
    with httpx.Client(base_url=observed.base_url, timeout=10) as client:
        ok = client.post("/v1/chat/completions", json=body, headers=every_header(key.key))
        refused = client.post("/v1/chat/completions", json=body, headers=every_header(forged.key))
    assert ok.status_code == 200 and refused.status_code == 401
    entry = wait_for_line(observed, ok.headers["x-request-id"])
    usage = ok.json()["usage"]
    assert entry["tenant"] == "pro-tenant" and entry["key_id"] == key.key_id
    assert entry["model"] == CHAT_MODEL and entry["endpoint"] == "chat.completions"
    assert entry["deployment"] == upstream and entry["region"] == "us-east"
    assert (entry["status"], entry["decision"], entry["error"]) == (200, "allowed", None)
    assert entry["prompt_tokens"] == usage["prompt_tokens"]
    assert entry["completion_tokens"] == usage["completion_tokens"]
    expected = cost_micros(CHAT_MODEL, usage["prompt_tokens"], usage["completion_tokens"])
    assert entry["cost"] == pytest.approx(expected / 1_000_000)
    assert entry["trace_id"] == TRACE_ID
    assert 0 < entry["upstream_ms"] <= entry["latency_ms"]
    assert entry["overhead_ms"] == pytest.approx(entry["latency_ms"] - entry["upstream_ms"], 1e-2)
    assert entry["ttft_ms"] is None  # not a stream
    denied = wait_for_line(observed, refused.headers["x-request-id"])
    assert (denied["status"], denied["decision"], denied["tenant"]) == (401, "denied_auth", None)
    text = access_log(observed).read_text()
    for issued in (key, forged):
        assert issued.key not in text
        assert issued.secret_part not in text


def test_stream_line_has_time_to_first_token(observed: Gateway, observed_keys: KeyIssuer) -> None:
    key = observed_keys.shared("pro")
    body = {"model": CHAT_MODEL, "messages": messages("[[mock:ttft=50]] stream"), "stream": True}
    headers = {"authorization": f"Bearer {key.key}"}
    with (
        httpx.Client(base_url=observed.base_url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        request_id = resp.headers["x-request-id"]
        assert b"[DONE]" in resp.read()
    entry = wait_for_line(observed, request_id)
    assert entry["stream"] is True and entry["completion_tokens"] > 0
    assert 50 <= entry["ttft_ms"] <= entry["upstream_ms"]


def test_log_injection_stays_on_one_line(observed: Gateway, observed_keys: KeyIssuer) -> None:
    key = observed_keys.shared("pro")
    forged = '{"request_id": "forged", "status": 200}'
    evil = f"gpt-3.5-turbo\r\n{forged}\n\u2028{forged}"
    headers = {"authorization": f"Bearer {key.key}"}
    with httpx.Client(base_url=observed.base_url, timeout=10) as client:
        responses = [
            client.post("/v1/chat/completions", json={"model": evil, "messages": []},
                        headers=headers)
            for _ in range(3)
        ]  # fmt: skip
    ids = [r.headers["x-request-id"] for r in responses]
    entries = [wait_for_line(observed, request_id) for request_id in ids]
    assert all(entry["model"] == evil for entry in entries)
    lines = log_lines(observed)
    assert all(json.loads(line)["request_id"] != "forged" for line in lines)  # all JSON
    assert sum("forged" in line for line in lines) == 3  # one line per request


def test_traceparent_reaches_the_upstream_without_tracing(
    observed: Gateway, observed_keys: KeyIssuer, mock: MockUpstream
) -> None:
    key = observed_keys.shared("pro")
    with sdk(observed, key.key) as client:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=messages("traced"),
            extra_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
        )  # fmt: skip
    seen = mock.last_request()["headers"]
    assert seen["traceparent"] == TRACEPARENT and seen["tracestate"] == "vendor=1"


def test_top_shows_live_traffic(observed: Gateway, observed_keys: KeyIssuer) -> None:
    key = observed_keys.shared("pro")
    top = subprocess.Popen(
        [*QUOTAGATE, "top", "--url", observed.base_url, "--interval", "0.5", "--iterations", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    with sdk(observed, key.key) as client:
        while top.poll() is None:  # traffic until top has drawn its frames
            client.chat.completions.create(model=CHAT_MODEL, messages=messages("watched"))
            time.sleep(0.02)  # pacing: ~50 a second stays inside the key's 600 a minute
    out = top.communicate(timeout=10)[0].decode()
    assert top.returncode == 0, out
    assert re.search(r"chat\.completions\s+│?\s*allowed\s+│?\s*[1-9]", out), out
    assert "gpt-3.5-turbo" in out and "Top 10 tenants" in out


def stdout_entry(gateway: Gateway, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The access-log line of ``request_id`` in the gateway's standard output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gateway.log_text().splitlines():
            if line.startswith("{") and json.loads(line)["request_id"] == request_id:
                return dict(json.loads(line))
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id} on stdout in {timeout}s")


def test_default_access_log_is_on_stdout_and_has_unknown_paths(
    gateway: Gateway, pro_key: IssuedKey
) -> None:
    """The shared gateway runs the default: the access log on standard output."""
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        body = {"model": CHAT_MODEL, "messages": messages("stdout")}
        headers = {"authorization": f"Bearer {pro_key.key}", "x-request-id": "e2e-stdout-line"}
        assert client.post("/v1/chat/completions", json=body, headers=headers).is_success
        nowhere = client.get("/v2/nowhere", headers={"x-request-id": "e2e-unknown-path"})
        wrong = client.delete("/v1/chat/completions", headers={"x-request-id": "e2e-bad-method"})
    assert (nowhere.status_code, wrong.status_code) == (404, 405)
    served = stdout_entry(gateway, "e2e-stdout-line")
    assert (served["status"], served["tenant"]) == (200, "pro-tenant")
    unknown = stdout_entry(gateway, "e2e-unknown-path")
    assert (unknown["endpoint"], unknown["status"], unknown["decision"]) == (
        "unknown",
        404,
        "not_found",
    )
    assert stdout_entry(gateway, "e2e-bad-method")["status"] == 405
