"""Child processes of the benchmark: started pinned to a core, awaited, always stopped.

Each child runs in its own session so a stop reaches it and anything it forked; stops
go by process id only. Readiness is polled on the child's health URL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(stat: Path) -> float:
    """utime + stime of a /proc stat file, in seconds (0 once it is gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, cmd: list[str]) -> list[str]:
    """``cmd`` under ``taskset`` (which execs it, so the pid is the command's own)."""
    return ["taskset", "-c", str(core), *cmd]


@dataclass
class Child:
    name: str
    core: int
    proc: subprocess.Popen[bytes]
    log: Path
    base_url: str

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, from /proc (0 once the process is gone)."""
        return _cpu(Path(f"/proc/{self.proc.pid}/stat"))

    def thread_cpu_seconds(self) -> tuple[float, float]:
        """CPU time so far of the main thread (the event loop) and of all other threads
        together (the ledger's database threads, for one), from /proc."""
        tasks = Path(f"/proc/{self.proc.pid}/task")
        main = other = 0.0
        with suppress(OSError):
            for task in tasks.iterdir():
                seconds = _cpu(task / "stat")
                if task.name == str(self.proc.pid):
                    main += seconds
                else:
                    other += seconds
        return main, other

    def log_tail(self, chars: int = 3000) -> str:
        with suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_child(
    name: str, core: int, cmd: list[str], log: Path, base_url: str, env: dict[str, str]
) -> Child:
    """Start ``cmd`` pinned to ``core`` and wait until ``base_url``/healthz answers 200."""
    out = log.open("wb")
    proc = subprocess.Popen(
        pinned(core, cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    out.close()
    child = Child(name, core, proc, log, base_url)
    try:
        _wait_healthy(child)
    except BaseException:
        child.stop()
        raise
    return child


def _wait_healthy(child: Child, timeout: float = 30.0) -> None:
    url = child.base_url + "/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}"
            )
        with suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name}: {url} not ready in {timeout:g}s:\n{child.log_tail()}")


def check_answers(name: str, url: str, body: bytes, headers: dict[str, str]) -> None:
    """One request as the load generator will send it: it must be a 200 chat completion."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    if status != 200:
        raise RuntimeError(f"{name} answered {status} at {url}: {data[:500]!r}")
    if "choices" not in json.loads(data):
        raise RuntimeError(f"{name} answered 200 without 'choices' at {url}: {data[:500]!r}")
