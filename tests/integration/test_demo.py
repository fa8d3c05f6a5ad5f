"""``quotagate demo`` plays the seed scenarios, exits 0, and leaves nothing running."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_plays_the_seed_scenarios_and_stops_everything(tmp_path: Path) -> None:
    # A policy in the environment and a cwd of its own: the demo must use the bundled
    # policy and its own temporary data dir regardless.
    env = {**os.environ, "COLUMNS": "120", "QUOTAGATE_CONFIG": str(tmp_path / "absent.yaml")}
    result = subprocess.run(
        [sys.executable, "-m", "quotagate", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "429" in out and "Retry-After" in out
    assert "403" in out and "model_not_allowed" in out
    assert "All 4 scenarios behaved as expected" in out

    ports = [int(re.search(rf"{name}:\s+http://127\.0\.0\.1:(\d+)", out)[1]) for name in ("gateway", "mock LLM")]  # type: ignore[index]
    assert [port for port in ports if listening(port)] == []
    assert not (tmp_path / "data").exists()
