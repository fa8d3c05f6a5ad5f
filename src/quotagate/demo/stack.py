"""The demo's processes: the gateway on the bundled policy, with its embedded mock LLM.

Everything lives in a fresh temporary data dir and on free loopback ports, so the demo
never touches ``./data`` nor a gateway the user already runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

QUOTAGATE = [sys.executable, "-m", "quotagate"]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """The gateway did not start; the message ends with its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    """The gateway process; it starts and stops the mock LLM itself."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.gateway_port = free_port()
        self.mock_port = free_port()
        self.region_ports = {"eu-west": free_port(), "us-east": free_port()}  # gpt-4's mocks
        self.admin_port = free_port()
        self.log_path = data_dir / "gateway.log"
        self.env = self._child_env()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_port}"

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("QUOTAGATE_CONFIG", None)  # the demo is about the bundled policy
        env["QUOTAGATE_DATA_DIR"] = str(self.data_dir)
        env["QUOTAGATE_LISTEN"] = f"127.0.0.1:{self.gateway_port}"
        env["QUOTAGATE_MOCK_PORT"] = str(self.mock_port)
        env["QUOTAGATE_MOCK_EU_PORT"] = str(self.region_ports["eu-west"])
        env["QUOTAGATE_MOCK_US_PORT"] = str(self.region_ports["us-east"])
        env["QUOTAGATE_ADMIN_LISTEN"] = f"127.0.0.1:{self.admin_port}"
        return env

    def start(self) -> None:
        """Start ``quotagate serve`` and wait until ``/readyz`` answers 200."""
        with self.log_path.open("wb") as log:  # serve's banner and logs go here, unseen
            self._proc = subprocess.Popen(
                [*QUOTAGATE, "serve", "--log-level", "warning"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own process group: Ctrl-C reaches only the demo, which then stops the
                # gateway in order; and the group reaches the mock if the gateway dies.
                start_new_session=True,
            )
        self._wait_ready(self._proc)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"the gateway exited with {proc.returncode}:\n{self.log_tail()}")
            with (
                suppress(OSError),
                urllib.request.urlopen(self.gateway_url + "/readyz", timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise StackError(f"the gateway was not ready in {READY_TIMEOUT:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop the gateway, then anything left in its process group (the mock)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # SIGINT, not SIGTERM: uvicorn re-raises a caught SIGTERM once it has shut down,
        # which kills `serve` before it stops its embedded mock; SIGINT unwinds cleanly.
        self._signal_wait(proc, signal.SIGINT)
        if proc.poll() is None:
            self._signal_wait(proc, signal.SIGKILL)
        self._stop_group(proc.pid)

    @staticmethod
    def _signal_wait(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with suppress(ProcessLookupError):
            proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)

    def _stop_group(self, pgid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return  # the group is empty: the gateway stopped its mock
            deadline = time.monotonic() + STOP_TIMEOUT / 2
            while port_open(self.mock_port) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not port_open(self.mock_port):
                return
