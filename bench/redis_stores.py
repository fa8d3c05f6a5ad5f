"""The Redis side of ``bench/stores.py``: private servers pinned to the load core, and
how many commands they ran, from ``INFO commandstats``.

The servers are the tests' own (``tests/redis_servers.py``: a standalone server, a
3-master Cluster), pinned after start with ``taskset -a`` (every thread) to the core of
the mock and the load generator, so the gateway keeps its core to itself.

Redis counts a command a script runs (``redis.call``) in ``commandstats`` like one a
client sends. A command is a round trip unless a shipped Lua script calls it; the
store sends only EVALSHA (EVAL after a NOSCRIPT), SCRIPT LOAD, PING and the Cluster
client's topology queries, none of which a script calls, so the split is exact.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import redis

from processes import Child

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_servers import RedisServer, start_cluster, start_redis

_CALLED = re.compile(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]")
_OWN = frozenset({"info"})  # the bench's own INFO, one per snapshot
_SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


def script_commands() -> frozenset[str]:
    """Every command a shipped Lua script runs inside the server (no round trip)."""
    lua = resources.files("quotagate.store").joinpath("lua")
    found = {
        name.lower()
        for script in lua.iterdir()
        if script.name.endswith(".lua")
        for name in _CALLED.findall(script.read_text("utf-8"))
    }
    return frozenset(found)


@dataclass
class RedisDeployment:
    """A store URL for the gateway and the servers behind it."""

    url: str
    servers: tuple[RedisServer, ...]
    # One connection per server, kept: a new one would add its HELLO to the counts.
    _clients: list[redis.Redis] = field(default_factory=list)

    def clients(self) -> list[redis.Redis]:
        if not self._clients:
            self._clients = [redis.Redis(port=s.port, socket_timeout=5) for s in self.servers]
        return self._clients

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def children(self, core: int) -> list[Child]:
        """The servers as watched processes, for the CPU accounting of a run."""
        many = len(self.servers) > 1
        return [
            Child(f"redis {i + 1}" if many else "redis", core, s.proc, _log(s), s.url)
            for i, s in enumerate(self.servers)
            if s.proc is not None
        ]

    def command_stats(self) -> CommandStats:
        """Calls so far per command (``evalsha``, ``config|resetstat``), over all servers."""
        stats = CommandStats(Counter(), Counter())
        for client in self.clients():
            info = client.info("commandstats")
            for name, values in info.items():
                command = name.removeprefix("cmdstat_")
                stats.calls[command] += int(values["calls"])
                # rejected: refused before running (not in calls); failed: ran, erred
                stats.errors[command] += int(values.get("rejected_calls", 0))
                stats.errors[command] += int(values.get("failed_calls", 0))
        return stats


@dataclass(frozen=True)
class CommandStats:
    calls: Counter[str]
    errors: Counter[str]  # rejected + failed calls

    def __sub__(self, before: CommandStats) -> CommandStats:
        return CommandStats(self.calls - before.calls, self.errors - before.errors)


def _log(server: RedisServer) -> Path:
    return Path(server.tmp) / f"redis-{server.port}.log"


def _pin(server: RedisServer, core: int) -> None:
    assert server.proc is not None, "started"
    cmd = ["taskset", "-a", "-p", "-c", str(core), str(server.proc.pid)]
    subprocess.run(cmd, check=True, capture_output=True)


@contextmanager
def standalone(tmp: Path, core: int) -> Iterator[RedisDeployment]:
    server = start_redis(tmp)
    try:
        _pin(server, core)
        deployment = RedisDeployment(server.url, (server,))
        yield deployment
        deployment.close()
    finally:
        server.stop()


@contextmanager
def cluster(tmp: Path, core: int) -> Iterator[RedisDeployment]:
    nodes = start_cluster(tmp)
    try:
        for node in nodes.nodes:
            _pin(node, core)
        deployment = RedisDeployment(nodes.url, tuple(nodes.nodes))
        yield deployment
        deployment.close()
    finally:
        nodes.stop()


def start_redis_stores(
    tmp: Path, core: int, stack: ExitStack, stores: Iterable[str]
) -> dict[str, RedisDeployment]:
    """Of ``stores``, "redis" (a standalone server) and "redis cluster", started and
    pinned to ``core``; stopped with ``stack``."""
    starters = {"redis": standalone, "redis cluster": cluster}
    return {
        store: stack.enter_context(starters[store](tmp / store.replace(" ", "-"), core))
        for store in stores
        if store in starters
    }


@dataclass(frozen=True)
class CallsPerRequest:
    """Commands the servers ran during a measured run, per request the gateway answered."""

    stats: CommandStats
    requests: int
    in_scripts: frozenset[str]

    @property
    def round_trips(self) -> float:
        """Every command a client sent, connection set-up (HELLO) included."""
        return self._per_request(c for c, _ in self._counted() if c not in self.in_scripts)

    @property
    def script_calls(self) -> float:
        """The limit decisions' own round trips: script calls (EVALSHA, EVAL after a
        NOSCRIPT). New pooled connections' HELLO is the only other command seen."""
        return self._per_request(_SCRIPT_CALLS)

    def _per_request(self, commands: Iterable[str]) -> float:
        return sum(self.stats.calls[c] for c in commands) / max(1, self.requests)

    @property
    def errors(self) -> int:
        return sum(self.stats.errors.values())

    def per_command(self) -> list[tuple[str, float, bool]]:
        """(command, calls per request, run inside a script), round trips first."""
        rows = [(c, n / max(1, self.requests), c in self.in_scripts) for c, n in self._counted()]
        return sorted(rows, key=lambda row: (row[2], -row[1], row[0]))

    def _counted(self) -> list[tuple[str, int]]:
        return [(c, n) for c, n in self.stats.calls.items() if c not in _OWN]
