"""Real processes for end-to-end tests: the mock LLM, gateways, the CLI.

Everything runs as a child process on a free loopback port; readiness is awaited by
polling the process's health endpoint (an event, not a fixed sleep), and every
process is stopped and its log kept for the failure report.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

QUOTAGATE = [sys.executable, "-m", "quotagate"]
SHARED_REDIS = "redis://127.0.0.1:6379/0"  # the machine's: other users' keys live there too
_PREFIXES: list[str] = []  # handed out by redis_prefix, dropped when the session ends


def redis_prefix() -> str:
    """A key prefix of the shared Redis that nothing else uses; whatever keys it holds
    when the test session ends are deleted then (tests/conftest.py)."""
    prefix = f"qgtest:{secrets.token_hex(6)}:"
    _PREFIXES.append(prefix)
    return prefix


def drop_redis_prefixes() -> int:
    """Delete the keys of every prefix ``redis_prefix`` handed out; how many there were."""
    # Imported here: redis-py loads OpenTelemetry when it is installed, and the test
    # that tracing off imports none of it runs this module in its own process.
    import redis

    dropped = 0
    with redis.Redis.from_url(SHARED_REDIS) as client:
        for prefix in _PREFIXES:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                dropped += int(client.delete(*keys))
    _PREFIXES.clear()
    return dropped


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        with suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready in {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path
    base_url: str

    def stop(self) -> None:
        """Stop the process and everything it started (its own session): a wrapper
        such as ``faketime`` forks, and its child must not outlive the test."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)


def start(args: list[str], log: Path, ready_path: str, port: int, env: dict[str, str]) -> Process:
    out = log.open("wb")
    proc = subprocess.Popen(
        [*QUOTAGATE, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    process = Process(proc, log, base)
    try:
        wait_ready(base + ready_path, proc, log)
    except Exception:
        process.stop()
        raise
    return process


def start_mock(tmp: Path, *extra: str) -> Process:
    port = free_port()
    args = ["mock-llm", "--listen", f"127.0.0.1:{port}", *extra]
    return start(args, tmp / f"mock-{port}.log", "/healthz", port, dict(os.environ))


def policy(upstream: str, **overrides: Any) -> dict[str, Any]:
    """A test policy in the README's contract, fronting ``upstream`` (a /v1 base URL)."""
    doc: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "max_body_bytes": 65536},
        "store": {"url": "memory://"},
        "auth": {"key_cache_ttl": "200ms"},
        "models": {
            "gpt-3.5-turbo": {
                "price": {"input_per_1m": 0.5, "output_per_1m": 1.5},
                "deployments": [{"url": upstream, "region": "us-east"}],
            },
            "gpt-4": {
                "price": {"input_per_1m": 30, "output_per_1m": 60},
                "deployments": [{"url": upstream, "region": "us-east"}],
            },
            "text-embedding-3-small": {"deployments": [{"url": upstream}]},
        },
        # Tests of other features make the one mock fail on purpose ([[mock:error=500]]):
        # that must not open its circuit for the tests after them (test_routing.py
        # tests the breaker on fleets of its own).
        "routing": {"breaker": {"consecutive_failures": 1000, "min_requests": 1000}},
        "plans": {
            "free": {
                "models": ["gpt-3.5-turbo", "text-embedding-3-small"],
                "max_tokens": 512,
                "limits": [{"scope": "key", "requests": 10, "per": "1m"}],
            },
            "pro": {
                "models": ["gpt-3.5-turbo", "gpt-4", "text-embedding-3-small"],
                "limits": [{"scope": "key", "requests": 600, "per": "1m"}],
            },
            "enterprise": {
                "models": ["*"],
                "limits": [{"scope": "key", "requests": 6000, "per": "1m", "burst": 100}],
            },
        },
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


@dataclass
class Gateway:
    """A gateway process with its own policy file, data dir and secret."""

    tmp: Path
    doc: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None
    replicas: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.doc.setdefault("server", {})["listen"] = f"127.0.0.1:{self.port}"
        self.admin_port = free_port()
        self.doc.setdefault("admin", {}).setdefault("listen", f"127.0.0.1:{self.admin_port}")
        self.doc.setdefault("database", {"url": f"sqlite+aiosqlite:///{self.tmp}/qg.db"})
        self.config = self.tmp / "policy.yaml"
        self.config.write_text(yaml.safe_dump(self.doc))
        self.env = {
            **os.environ,
            "QUOTAGATE_DATA_DIR": str(self.tmp / "data"),
            "QUOTAGATE_SECRET": secrets.token_urlsafe(24),
            **self.env,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, *extra: str) -> Gateway:
        args = ["serve", "--config", str(self.config), "--log-level", "debug", *extra]
        log = self.tmp / f"gateway-{self.port}.log"
        self.process = start(args, log, "/healthz", self.port, self.env)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        for replica in self.replicas:
            replica.stop()

    def replica(self, *prefix: str) -> Process:
        """Another gateway process on the same policy, database and secret (a second
        instance behind the same load balancer). ``prefix`` wraps the command, e.g.
        ``faketime``."""
        port = free_port()
        args = ["serve", "--config", str(self.config), "--listen", f"127.0.0.1:{port}",
                "--admin-listen", f"127.0.0.1:{free_port()}"]  # fmt: skip
        log = self.tmp / f"gateway-{port}.log"
        out = log.open("wb")
        cmd = [*prefix, *QUOTAGATE, *args]
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        process = Process(proc, log, f"http://127.0.0.1:{port}")
        try:
            wait_ready(process.base_url + "/healthz", proc, log)
        except Exception:
            process.stop()
            raise
        self.replicas.append(process)
        return process

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [*QUOTAGATE, *args, "--config", str(self.config)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"quotagate {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def tenant_key(self, tenant: str, plan: str) -> str:
        """Create ``tenant`` on ``plan`` (if new) and return a fresh key for it."""
        with suppress(RuntimeError):
            self.cli("tenants", "create", tenant, "--plan", plan)
        return str(json.loads(self.cli("keys", "create", "--tenant", tenant, "--json"))["key"])

    def log_text(self) -> str:
        return self.process.log.read_text() if self.process else ""
