"""Redis limit store: standalone, TLS, Sentinel or Cluster, one script call per slot.

Every check of a batch is decided by ``lua/admit.lua`` on the server's clock, all or
nothing. On a standalone server (or Sentinel's master) that is one EVALSHA per
request. In a Cluster a script may only touch one slot: a tenant's counters share one
through their ``{t:<tenant>}`` hash tag, and cross-tenant scopes (global, ip) live in
other slots, so those are decided first and compensated if a later slot denies.

redis-py's exceptions enter here and leave as ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import hiredis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.maint_notifications import MaintNotificationsConfig

from quotagate.store.base import (
    Adjustable,
    Admission,
    Check,
    CheckOutcome,
    CounterCheck,
    LeaseCheck,
    RateCheck,
    ReservationCheck,
    StoreUnavailable,
    WindowCheck,
)

log = logging.getLogger(__name__)
C = TypeVar("C", bound=AbstractConnection)
_US = 1_000_000
_POOL_SIZE = 64  # connections per gateway process (per node in a Cluster)
_BATCH = 128  # settlements at most in one script call
_FAILED = -2  # adjust.lua's answer for a group whose commands failed (e.g. WRONGTYPE)


def _script(name: str) -> str:
    return resources.files("quotagate.store").joinpath(f"lua/{name}").read_text("utf-8")


def hosts(netloc: str) -> list[tuple[str, int]]:
    """``(host, port)`` of each ``H:P`` in a URL's comma-separated netloc."""
    found = []
    for item in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        found.append((host or item, int(port) if port.isdigit() else 6379))
    return found


def sentinel_service(path: str) -> str:
    """The master's service name in ``redis+sentinel://H:P/SERVICE``."""
    return path.strip("/").split("/")[0] or "mymaster"


def connect(url: str, timeout: float) -> Redis | RedisCluster:
    """A client for ``redis://``, ``rediss://``, ``redis+sentinel://H:P[,H:P]/service``
    or ``redis+cluster://H:P[,H:P]``."""
    parts = urlsplit(url)
    # driver_info=None: no CLIENT SETINFO handshake. It costs a round trip per new
    # connection, and on a cold burst against a Cluster it raced in redis-py's connect
    # path (AttributeError on a None writer, reproduced by the store contract tests).
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "driver_info": None,
    }
    if parts.scheme != "redis+cluster":  # the Cluster client has its own retries
        # Pooled connections die with a restarted server: retry a command once, at
        # once, on a fresh connection instead of failing the first call on each.
        common["retry"] = Retry(NoBackoff(), 1)
        common["retry_on_error"] = [RedisConnectionError]
    if parts.password:
        common["password"] = parts.password
    if parts.scheme == "redis+cluster":
        nodes = [ClusterNode(h, p) for h, p in hosts(parts.netloc)]
        # Maintenance notifications off: Redis 7.0 refuses that handshake anyway.
        cluster = RedisCluster(
            startup_nodes=nodes,
            max_connections=_POOL_SIZE * 2,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **common,
        )
        _pack_cluster_with_hiredis(cluster)
        return cluster
    if parts.scheme == "redis+sentinel":
        sentinel = Sentinel(hosts(parts.netloc), **common)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(
            sentinel_service(parts.path),
            connection_class=hiredis_packed(SentinelManagedConnection),
        )
        return master
    # A plain pool: RedisStore's semaphore already holds callers to _POOL_SIZE commands
    # in flight, so the pool never runs dry (measured: a BlockingConnectionPool's
    # condition variable cost ~15 µs CPU per command, a quarter of redis-py's total).
    pool = ConnectionPool.from_url(url, max_connections=_POOL_SIZE + 8, **common)
    pool.connection_class = _packing(pool.connection_kwargs, pool.connection_class)
    return Redis(connection_pool=pool)


def _pack_cluster_with_hiredis(cluster: RedisCluster) -> None:
    """The Cluster client takes no connection class: its nodes are made from the
    nodes manager's connection kwargs (the startup nodes already, the discovered ones
    on initialize). Set there."""
    kwargs = cluster.nodes_manager.connection_kwargs
    packed = _packing(kwargs, kwargs.get("connection_class", Connection))
    kwargs["connection_class"] = packed
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = packed


def _packing(kwargs: dict[str, Any], connection_class: type[C]) -> type[C]:
    """``connection_class`` packing with hiredis, unless the connections encode str
    otherwise than UTF-8 (a URL's ?encoding=…): hiredis writes UTF-8 only."""
    if str(kwargs.get("encoding", "utf-8")).lower() not in ("utf-8", "utf8"):
        return connection_class
    return hiredis_packed(connection_class)


class _HiredisPacking:
    """Commands packed by hiredis (C), not by the Python loop of redis-py's asyncio
    client, which costs about a microsecond an argument: a metered request's admission
    has ~20, a call carrying a batch of settlements ~15 a settlement. redis-py's
    synchronous client packs with hiredis too; the bytes on the wire are the same
    (tests/unit/test_redis_packing.py)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # "SCRIPT LOAD" and the like: the words of a command name are separate arguments.
        words = args[0].split()
        if len(words) > 1:
            args = (*words, *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # hiredis takes str, bytes, int and float; redis-py more
            pass
        try:
            return [hiredis.pack_command(tuple(_plain(a) for a in args))]
        except TypeError as exc:  # an argument redis-py refuses too (None, a bool...)
            raise DataError(str(exc)) from exc


def _plain(arg: Any) -> Any:
    return bytes(arg) if isinstance(arg, bytearray | memoryview) else arg


_PACKED: dict[type, type] = {}


def hiredis_packed(connection_class: type[C]) -> type[C]:
    """``connection_class`` packing its commands with hiredis (one subclass per class)."""
    packed = _PACKED.get(connection_class)
    if packed is None:
        name = f"Packed{connection_class.__name__}"
        packed = _PACKED[connection_class] = type(name, (_HiredisPacking, connection_class), {})
    return cast(type[C], packed)


def _fail(
    waiting: Sequence[tuple[list[str], list[Any], asyncio.Future[int]]], exc: Exception
) -> None:
    for _, _, answer in waiting:
        if not answer.done():
            answer.set_exception(exc)


def _args(check: Check) -> tuple[str | int | float, ...]:
    if isinstance(check, RateCheck):
        return ("g", check.interval * _US, check.capacity, check.cost)
    if isinstance(check, WindowCheck):
        return ("w", check.limit, round(check.window * _US), check.entry_id)
    if isinstance(check, CounterCheck):
        return ("c", check.limit, check.cost, _counter_spec(check))
    if isinstance(check, ReservationCheck):
        return ("r", round(check.ttl * _US), 0, check.member)
    return ("l", check.limit, round(check.ttl * _US), check.lease_id)


def _counter_spec(check: CounterCheck) -> str:
    """A fixed window ``f:<µs>``, or the calendar periods ``c:<prev>:<start>:<end>:<next>``."""
    if check.window:
        return _window_spec(check.window)
    return _calendar_spec(check.calendar())


@lru_cache(maxsize=256)
def _window_spec(window: float) -> str:
    return f"f:{round(window * _US)}"


@lru_cache(maxsize=1024)
def _calendar_spec(bounds: tuple[float, float, float, float]) -> str:
    # Cached: a period's bounds are the same for every request in it (a few zones and
    # periods per gateway), and formatting them was two admission and two settlement
    # specs a metered request.
    return "c:" + ":".join(str(round(b * _US)) for b in bounds)


def _adjust_args(check: Adjustable, delta: int) -> tuple[str, float | str, int]:
    if isinstance(check, CounterCheck):  # only the window or period it was charged in
        return ("c", _counter_spec(check), delta)
    return ("g", check.interval * _US, delta)


class RedisStore:
    def __init__(self, url: str, prefix: str = "qg:", timeout: float = 0.05) -> None:
        self.url = url
        self.prefix = prefix
        self.client = connect(url, timeout)
        self.cluster = isinstance(self.client, RedisCluster)
        self._admit = self.client.register_script(_script("admit.lua"))
        self._adjust = self.client.register_script(_script("adjust.lua"))
        self._release = self.client.register_script(_script("release.lua"))
        self._reap = self.client.register_script(_script("reap.lua"))
        self._swap = self.client.register_script(_script("swap.lua"))
        # Bounds commands in flight per process: a burst queues here (inside the
        # engine's deadline) rather than opening connections without limit.
        self._slots = asyncio.Semaphore(_POOL_SIZE)
        # Settlements waiting for the script call in flight to return (one server):
        # they go together in the next one (see settle).
        self._waiting: list[tuple[list[str], list[Any], asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.settle_calls = 0  # script calls that carried settlements (for the tests)

    async def start(self) -> None:
        """Load the scripts on every primary before traffic, so a cold burst does not
        meet NOSCRIPT all at once (EVALSHA still reloads on NOSCRIPT after a restart)."""
        try:
            for script in (self._admit, self._adjust, self._release, self._reap, self._swap):
                await self.client.script_load(script.script)
        except Exception as exc:  # not fatal: the gateway starts degraded and recovers
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def acquire(self, checks: Sequence[Check]) -> Admission:
        if not self.cluster:
            return await self._admit_group(checks)
        return await self._acquire_by_slot(checks)

    async def _admit_group(self, checks: Sequence[Check]) -> Admission:
        keys = [self.prefix + c.key for c in checks]
        args = [a for c in checks for a in _args(c)]
        try:
            async with self._slots:
                reply = await self._admit(keys=keys, args=args)
        except Exception as exc:  # redis-py raises more than RedisError on broken links
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
        outcomes = tuple(
            CheckOutcome(int(reply[i]), reply[i + 1] / _US, reply[i + 2] / _US)
            for i in range(2, len(reply), 3)
        )
        return Admission(bool(reply[0]), outcomes, int(reply[1]) - 1)

    async def _acquire_by_slot(self, checks: Sequence[Check]) -> Admission:
        # Cross-tenant slots first, the tenant's own slot last: a denial there is the
        # common case and the earlier slots are then compensated.
        order = sorted(self._by_slot(checks), key=lambda ix: "{t:" in checks[ix[0]].key)
        outcomes: list[CheckOutcome | None] = [None] * len(checks)
        admitted: list[Check] = []
        for indexes in order:
            group = [checks[i] for i in indexes]
            result = await self._admit_group(group)
            for i, outcome in zip(indexes, result.outcomes, strict=True):
                outcomes[i] = outcome
            if not result.allowed:
                await self._compensate(admitted)
                filled = tuple(o or CheckOutcome(0, 0.0, 0.0) for o in outcomes)
                return Admission(False, filled, indexes[result.denied])
            admitted.extend(group)
        return Admission(True, tuple(o for o in outcomes if o is not None))

    async def _compensate(self, admitted: Sequence[Check]) -> None:
        rates = [c for c in admitted if isinstance(c, RateCheck | CounterCheck)]
        leases = [c for c in admitted if isinstance(c, LeaseCheck)]
        # A window log entry is removed like a lease (same ZREM by member).
        leases += [LeaseCheck(c.key, c.limit, c.entry_id, 0.0) for c in admitted
                   if isinstance(c, WindowCheck)]  # fmt: skip
        if rates:
            await self.adjust(rates, [-c.cost for c in rates])
        if leases:
            await self.release(leases)

    async def adjust(
        self, checks: Sequence[Adjustable], deltas: Sequence[int], at_us: int | None = None
    ) -> None:
        """``at_us``: when the request was admitted (the server's µs, as a settlement
        answers it), for window and calendar counters; else the server's now."""
        for group in self._by_slot(checks):
            keys = [self.prefix + checks[i].key for i in group]
            args: list[Any] = [len(group), "" if at_us is None else at_us]
            args += [a for i in group for a in _adjust_args(checks[i], deltas[i])]
            if _FAILED in await self._call(self._adjust, keys, args):
                raise StoreUnavailable("redis: adjust.lua failed on a counter")

    async def settle(
        self, reservation: ReservationCheck, checks: Sequence[Adjustable], deltas: Sequence[int]
    ) -> bool:
        key = self.prefix + reservation.key
        own: Sequence[int]
        if self.cluster:  # the checks in the reservation's slot go with it
            slot = key_slot(key.encode())
            own = [i for i, c in enumerate(checks) if self._slot(c.key) == slot]
        else:
            own = range(len(checks))
        keys = [key] + [self.prefix + checks[i].key for i in own]
        args: list[Any] = [len(keys), "", "r", round(reservation.ttl * _US), reservation.member]
        args += [a for i in own for a in _adjust_args(checks[i], deltas[i])]
        if self.cluster:  # a script call touches one slot: one settlement a call
            admitted_at = (await self._settle_group(keys, args))[0]
        else:
            admitted_at = await self._settle_batched(keys, args)
        if admitted_at == _FAILED:  # its own group failed; the others in its call did not
            raise StoreUnavailable("redis: adjust.lua failed on this settlement")
        settled = admitted_at != -1
        rest = [i for i in range(len(checks)) if i not in own] if self.cluster else []
        if settled and rest:  # other slots (global scopes in a Cluster): a second call,
            # at the admission's instant, so that a correction keeps to its period
            rest_checks, rest_deltas = [checks[i] for i in rest], [deltas[i] for i in rest]
            await self.adjust(rest_checks, rest_deltas, at_us=admitted_at)
        return settled

    async def _settle_batched(self, keys: list[str], args: list[Any]) -> int:
        """One settlement, sent with the others that arrive while a call is in flight.

        Settlements come after the response, one per metered request; each its own
        script call was a second round trip per request. Here at most one settlement
        call is in flight per process: what arrives meanwhile waits and goes in the next
        one, so under load one call carries many and when idle none waits longer than
        about two round trips (the call in flight, then its own). Each group is decided
        on its own by adjust.lua (a reaped reservation, or a counter of the wrong type,
        fails its own group only, which it leaves untouched); a call
        that fails (Redis down) fails every settlement in it. A settlement whose caller
        gave up (the engine's deadline) before it was sent is dropped, as one never
        sent: its reservation is reaped. So a frozen Redis, each call waiting out the
        socket timeout, holds no more than a deadline's worth of settlements here.
        """
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_settlements())
            self._sender.add_done_callback(self._sender_ended)
        return await answer

    async def _send_settlements(self) -> None:
        batch: list[tuple[list[str], list[Any], asyncio.Future[int]]] = []
        try:
            while self._waiting:
                live = [w for w in self._waiting if not w[2].done()]  # callers still there
                batch, self._waiting = live[:_BATCH], live[_BATCH:]
                if not batch:
                    break
                keys = [k for group in batch for k in group[0]]
                args = [a for group in batch for a in group[1]]
                try:
                    answers = await self._settle_group(keys, args)
                except StoreUnavailable as exc:
                    _fail(batch, exc)
                    continue
                for (_, _, answer), admitted_at in zip(batch, answers, strict=True):
                    if not answer.done():  # its caller may have given up (its deadline)
                        answer.set_result(admitted_at)
                batch = []
        except BaseException:  # cancelled (or a bug): nobody may wait on the batch for ever
            _fail(batch, StoreUnavailable("redis: the settlement sender stopped"))
            raise

    def _sender_ended(self, sender: asyncio.Task[None]) -> None:
        """A sender that ended abnormally (even before it ran) answers those waiting,
        unless a new sender has taken over (this callback runs a turn after its end)."""
        if not sender.cancelled():
            if (exc := sender.exception()) is None:
                return  # it ran out of work
            log.error("redis: the settlement sender failed", exc_info=exc)
        if sender is not self._sender:
            return
        _fail(self._waiting, StoreUnavailable("redis: the settlement sender stopped"))
        self._waiting = []

    async def _settle_group(self, keys: list[str], args: list[Any]) -> list[int]:
        self.settle_calls += 1
        return [int(a) for a in await self._call(self._adjust, keys, args)]

    def _slot(self, key: str) -> int:
        return key_slot((self.prefix + key).encode()) if self.cluster else 0

    async def reap(self, limit: int = 1000) -> list[str]:
        taken: list[str] = []
        try:
            async for key in self.client.scan_iter(match=self.prefix + "rs:*", count=1000):
                async with self._slots:
                    due = await self._reap(keys=[key], args=[limit - len(taken)])
                taken += [m.decode() if isinstance(m, bytes) else m for m in due]
                if len(taken) >= limit:
                    break
        except Exception as exc:  # redis-py raises more than RedisError on broken links
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
        return taken

    async def release(self, leases: Sequence[LeaseCheck]) -> None:
        for group in self._by_slot(leases):
            keys = [self.prefix + leases[i].key for i in group]
            await self._call(self._release, keys, [leases[i].lease_id for i in group])

    def _by_slot(self, checks: Sequence[Check]) -> list[list[int]]:
        if not self.cluster:
            return [list(range(len(checks)))] if checks else []
        groups: dict[int, list[int]] = {}
        for index, check in enumerate(checks):
            groups.setdefault(key_slot((self.prefix + check.key).encode()), []).append(index)
        return list(groups.values())

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            async with self._slots:
                return await script(keys=keys, args=args)
        except Exception as exc:  # redis-py raises more than RedisError on broken links
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    async def put_if_absent(self, key: str, value: bytes, ttl: float) -> bytes | None:
        try:
            async with self._slots:
                # NX with GET needs Redis 7.0: one command, no race between look and set.
                found = await self.client.set(
                    self.prefix + key, value, nx=True, get=True, px=max(1, round(ttl * 1000))
                )
        except Exception as exc:  # redis-py raises more than RedisError on broken links
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
        return found if isinstance(found, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            async with self._slots:
                await self.client.set(self.prefix + key, value, px=max(1, round(ttl * 1000)))
        except Exception as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    async def get(self, key: str) -> bytes | None:
        try:
            async with self._slots:
                found = await self.client.get(self.prefix + key)
        except Exception as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
        return found if isinstance(found, bytes) else None

    async def swap(self, key: str, expected: bytes, value: bytes | None, ttl: float) -> bool:
        args = [expected, value or b"", max(1, round(ttl * 1000))]
        return bool(await self._call(self._swap, [self.prefix + key], args))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        """After the settlements already queued are sent (at most a few seconds)."""
        if self._sender is not None and not self._sender.done():
            await asyncio.wait({self._sender}, timeout=5.0)
        await self.client.aclose()
