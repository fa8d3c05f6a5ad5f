"""OpenTelemetry spans of an in-process gateway, read from the SDK's in-memory exporter;
the upstream is the real mock LLM, which reports the traceparent it received."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from harness import Gateway as GatewayProcess
from harness import policy
from quotagate.app import Gateway, GatewayApp
from quotagate.config.schema import Policy
from quotagate.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "trace me"}]}


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The process-wide tracer provider (OpenTelemetry allows setting it once)."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory


class Traced:
    def __init__(self, client: httpx.AsyncClient, key: str, upstream: str) -> None:
        self.client, self.key, self.upstream = client, key, upstream

    async def chat(self, **extra: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.key}", "traceparent": TRACEPARENT}
        return await self.client.post("/v1/chat/completions", json={**CHAT, **extra},
                                      headers=headers)  # fmt: skip

    async def upstream_saw(self) -> dict[str, str]:
        mock = self.upstream.removesuffix("/v1")
        async with httpx.AsyncClient() as client:
            recorded = (await client.get(mock + "/_mock/last-request")).json()
        return dict(recorded["headers"])


@pytest.fixture
async def traced(
    tmp_path: Path, upstream: str, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Traced]:
    monkeypatch.setenv("QUOTAGATE_SECRET", "tracing-test-secret")
    doc = policy(upstream)
    doc["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path}/qg.db"}
    doc["observability"] = {"tracing": {"enabled": True}, "access_log": {"enabled": False}}
    settings = Settings(config_path=None, data_dir=tmp_path)
    gw = Gateway(Policy.model_validate(doc), settings)
    app = GatewayApp(gw)
    await gw.start()
    try:
        await gw.db.create_tenant("acme", "pro")
        _, key = await gw.db.create_key("acme", settings.server_secret())
        exporter.clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Traced(client, key, upstream)
    finally:
        await gw.stop()


def spans_of(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == TRACE_ID]
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), [s.name for s in spans]
    return by_name


async def test_one_trace_per_request_continues_the_clients(
    traced: Traced, exporter: InMemorySpanExporter
) -> None:
    response = await traced.chat()
    assert response.status_code == 200
    usage = response.json()["usage"]
    spans = spans_of(exporter)
    root = spans["POST /v1/chat/completions"]
    assert root.kind == SpanKind.SERVER
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
    attributes = dict(root.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-3.5-turbo"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["quotagate.tenant"] == "acme"
    children = {
        name for name, s in spans.items() if s.parent and s.parent.span_id == root.context.span_id
    }
    assert children == {"authenticate", "limits", "chat gpt-3.5-turbo", "settlement"}
    upstream = spans["chat gpt-3.5-turbo"]
    assert upstream.kind == SpanKind.CLIENT
    upstream_attributes = dict(upstream.attributes or {})
    assert upstream_attributes["gen_ai.operation.name"] == "chat"
    assert upstream_attributes["server.address"] == "127.0.0.1"
    assert root.start_time is not None and upstream.start_time is not None
    assert root.start_time <= upstream.start_time
    # The upstream was told the upstream span is its parent, in the client's trace.
    seen = await traced.upstream_saw()
    assert seen["traceparent"] == f"00-{TRACE_ID}-{upstream.context.span_id:016x}-01"


async def test_stream_span_marks_the_first_token(
    traced: Traced, exporter: InMemorySpanExporter
) -> None:
    response = await traced.chat(stream=True)
    assert response.status_code == 200 and b"[DONE]" in response.content
    upstream = spans_of(exporter)["chat gpt-3.5-turbo"]
    events = [e for e in upstream.events if e.name == "gen_ai.first_token"]
    assert len(events) == 1
    assert upstream.start_time is not None and upstream.end_time is not None
    assert upstream.start_time <= events[0].timestamp <= upstream.end_time


async def test_an_unknown_path_does_not_name_a_span(
    traced: Traced, exporter: InMemorySpanExporter
) -> None:
    headers = {"traceparent": TRACEPARENT}
    response = await traced.client.get("/v1/secret-looking-path-123", headers=headers)
    assert response.status_code == 404
    assert set(spans_of(exporter)) == {"GET"}


async def test_a_refusal_marks_its_stage_span(
    traced: Traced, exporter: InMemorySpanExporter
) -> None:
    traced.key = "qg-notakey"
    response = await traced.chat()
    assert response.status_code == 401
    spans = spans_of(exporter)
    assert spans["authenticate"].status.status_code == StatusCode.ERROR
    assert dict(spans["POST /v1/chat/completions"].attributes or {})["error.type"]
    assert "limits" not in spans and "settlement" not in spans


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path, upstream: str) -> None:
    script = f"""
import sys
from pathlib import Path
from quotagate.app import Gateway, GatewayApp
from quotagate.config.schema import Policy
from quotagate.settings import Settings
from harness import Gateway as GatewayProcess
from harness import policy
doc = policy({upstream!r})
doc["database"] = {{"url": "sqlite+aiosqlite:///{tmp_path}/qg.db"}}
settings = Settings(None, Path({str(tmp_path)!r}))
GatewayApp(Gateway(Policy.model_validate(doc), settings))
loaded = [m for m in sys.modules if m.startswith("opentelemetry")]
assert not loaded, loaded
print("clean")
"""
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": tests_dir, "QUOTAGATE_SECRET": "x", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr


class _Collector(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP receiver: keeps every export request's spans."""

    spans: ClassVar[list[tuple[str, Any]]] = []  # (service name, span)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((attributes.get("service.name", ""), span))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_spans_are_exported_over_otlp_as_the_environment_says(
    tmp_path: Path, upstream: str
) -> None:
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    doc = policy(upstream)
    doc["observability"] = {"tracing": {"enabled": True}}
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_SERVICE_NAME": "quotagate-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms between batch exports
    }
    gw = GatewayProcess(tmp_path, doc, env).start()
    try:
        key = gw.tenant_key("acme", "pro")
        headers = {"authorization": f"Bearer {key}", "traceparent": TRACEPARENT}
        response = httpx.post(gw.base_url + "/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ours = [(s, span) for s, span in _Collector.spans if span.trace_id.hex() == TRACE_ID]
            if any(span.name == "POST /v1/chat/completions" for _, span in ours):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no span of the request reached the collector")
        names = {span.name for _, span in ours}
        assert {"authenticate", "limits", "chat gpt-3.5-turbo"} <= names
        assert {service for service, _ in ours} == {"quotagate-under-test"}
    finally:
        gw.stop()
        collector.shutdown()
