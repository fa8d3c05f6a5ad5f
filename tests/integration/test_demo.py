"""``quotagate demo`` plays the seed scenarios, exits 0, and leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

DEMO = [sys.executable, "-m", "quotagate", "demo"]


def demo_env(tmp_path: Path) -> dict[str, str]:
    # A policy in the environment: the demo must use the bundled policy regardless.
    return {**os.environ, "COLUMNS": "120", "QUOTAGATE_CONFIG": str(tmp_path / "absent.yaml")}


def announced_ports(out: str) -> list[int]:
    """The gateway's and the mock LLM's ports, from the lines the demo prints."""
    ports = []
    for name in ("gateway", "mock LLM"):
        match = re.search(rf"^{name}:\s+http://127\.0\.0\.1:(\d+)", out, re.MULTILINE)
        assert match, f"no {name} URL in the output:\n{out}"
        ports.append(int(match[1]))
    return ports


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_plays_the_seed_scenarios_and_stops_everything(tmp_path: Path) -> None:
    result = subprocess.run(
        DEMO,
        cwd=tmp_path,
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "429" in out and "Retry-After" in out
    assert "403" in out and "model_not_allowed" in out
    assert "402" in out
    assert "free.tenant-tokens-day-gpt-3.5-turbo" in out  # the 402's code names the quota
    assert "threshold=80%" in out  # the pro tenant's warning header
    assert "us-east-1" in out and "gpt-4 -> gpt-3.5-turbo; reason=" in out  # the outage
    assert "during the spike" in out  # the traffic spike's table
    assert "All 8 scenarios behaved as expected" in out
    assert [port for port in announced_ports(out) if listening(port)] == []
    assert not (tmp_path / "data").exists()  # its data dir was a temporary one


def test_ctrl_c_stops_the_gateway_and_its_mock(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        DEMO,
        cwd=tmp_path,
        env=demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # rich flushes each print, so lines arrive as printed
            lines.append(line)
            if line.startswith("$ quotagate"):  # the gateway is up; provisioning began
                proc.send_signal(signal.SIGINT)
                break
        out = "".join(lines) + proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert [port for port in announced_ports(out) if listening(port)] == []
