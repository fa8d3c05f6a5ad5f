"""Private redis-server processes for tests that stop, freeze or cluster Redis.

The shared server at 127.0.0.1:6379 is used with unique key prefixes; tests that need
to kill or SIGSTOP Redis, or a Cluster, start their own here on free ports.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


def _free_port_with_bus() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 >= 65536:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _wait(predicate: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready in {timeout}s")


@dataclass
class RedisServer:
    port: int
    tmp: Path
    cluster: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.tmp.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.tmp), "--logfile",
                str(self.tmp / f"redis-{self.port}.log")]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     f"nodes-{self.port}.conf"]  # fmt: skip
        self.proc = subprocess.Popen(args)
        client = redis.Redis(port=self.port, socket_timeout=1)
        _wait(client.ping, f"redis on {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(tmp: Path) -> RedisServer:
    return RedisServer(_free_port_with_bus(), tmp).start()


@dataclass
class RedisCluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(tmp: Path, masters: int = 3) -> RedisCluster:
    nodes = [RedisServer(_free_port_with_bus(), tmp / str(i), cluster=True) for i in range(masters)]
    try:
        for node in nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

        def ready() -> bool:
            for node in nodes:
                with redis.Redis(port=node.port, socket_timeout=1) as client:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
            return True

        _wait(ready, "redis cluster", timeout=30)
    except Exception:
        for node in nodes:
            node.stop()
        raise
    return RedisCluster(nodes)


@dataclass
class RedisSentinel:
    master: RedisServer
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.master.stop()


def start_sentinel(tmp: Path) -> RedisSentinel:
    """A private master and one Sentinel watching it as ``mymaster``."""
    master = start_redis(tmp / "master")
    port = _free_port_with_bus()
    conf = tmp / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 5000\n"
    )
    proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)

    def knows_master() -> bool:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return client.sentinel_get_master_addr_by_name("mymaster") is not None

    try:
        _wait(knows_master, "redis sentinel")
    except Exception:
        proc.kill()
        master.stop()
        raise
    return RedisSentinel(master, port, proc)
