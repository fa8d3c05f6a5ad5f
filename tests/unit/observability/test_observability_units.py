"""The access-log writer, the decision vocabulary and the tenant cap, in-process."""

from __future__ import annotations

import inspect
import json
import os
import select
from pathlib import Path

import pytest

import quotagate.errors as errors
from quotagate.observability.access_log import AccessLog
from quotagate.observability.metrics import DECISIONS, decision_label
from quotagate.observability.tenants import OTHER, TenantSeries
from quotagate.routing.catalog import url_without_credentials


def test_every_gateway_error_decision_is_in_the_vocabulary() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.GatewayError)
    ]  # fmt: skip
    assert len(classes) > 10
    assert {c.decision for c in classes} <= DECISIONS
    assert {"allowed", "client_disconnected", "replayed"} <= DECISIONS
    assert decision_label("made_up") == "other"


def test_tenants_beyond_the_cap_fold_into_other() -> None:
    series = TenantSeries(max_tenants=2)
    assert [series.label(t) for t in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]


def test_deployment_url_drops_credentials() -> None:
    assert (
        url_without_credentials("https://user:pw@llm.example:8443/v1")
        == "https://llm.example:8443/v1"
    )


def test_lines_are_buffered_until_flushed_and_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.open(str(path), flush_interval=60)
    log.write({"n": 1, "model": "a\r\nb"})
    assert path.read_text() == ""  # buffered: no write per request
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"n": 1, "model": "a\r\nb"}]


def test_a_pipe_gets_whole_lines_in_atomic_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr("quotagate.observability.access_log.os.write", recording_write)
    log = AccessLog(write_end, flush_interval=60)
    for _ in range(20):
        log.write({"pad": "x" * 1000})
    log.flush()
    os.close(write_end)
    received = b""
    while chunk := os.read(read_end, 1 << 20):
        received += chunk
    os.close(read_end)
    assert len(writes) > 1  # 20 kB do not go in one write to a pipe
    # every write ends on a line boundary and fits PIPE_BUF, which POSIX makes atomic
    assert all(w.endswith(b"\n") and len(w) <= select.PIPE_BUF for w in writes)
    assert len(received.splitlines()) == 20


def test_a_failing_destination_drops_lines_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # writes get EPIPE
    log = AccessLog(write_end, flush_interval=60)
    log.write({"n": 1})
    log.flush()
    log.write({"n": 2})
    log.flush()
    os.close(write_end)
    assert caplog.text.count("access log: write failed") == 1
