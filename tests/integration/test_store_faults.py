"""The gateway in front of a Redis that dies or freezes mid-traffic.

Every test runs its own private redis-server, kills it (SIGKILL) or freezes it
(SIGSTOP) under a steady stream of requests, and checks what each failure policy
promises: ``open`` keeps answering 200, ``closed`` answers 503 ``limits_unavailable``,
``local`` admits up to the per-instance share and then 429s. Never a 500, never a
request held much past the store timeout, and once Redis is back, exact enforcement.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Gateway, policy
from redis_servers import RedisServer

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
WORKERS = 20
PACE = 0.1  # seconds between one worker's requests: ~200 requests/s in all
STREAM_LIMIT = 50  # per key per hour: the stream never refills it during a test
EXACT_LIMIT, EXACT_ATTEMPTS = 10, 15  # per key per minute
COOLDOWN = 1  # seconds the breaker stays open before one probe may pass
WAIT = 15.0  # seconds: the longest any condition is waited for
DEGRADED = "quotagate_limit_degraded_decisions"  # by mode
STORE_ERRORS = "quotagate_store_errors"  # by error
UNAVAILABLE_LINE = "limit store unavailable"


def fault_policy(upstream: str, store_url: str, mode: str) -> dict[str, Any]:
    doc = policy(upstream)
    doc["store"] = {"url": store_url, "timeout": "50ms", "instances": 1,
                    "breaker_failures": 3, "breaker_cooldown": f"{COOLDOWN}s"}  # fmt: skip
    # "stream" carries the traffic: 50 an hour is never reached before Redis dies (a
    # refusal from Redis would be cached, and the outage would go unnoticed), and
    # ``local`` spends its fresh per-instance bucket of 50 within the outage.
    doc["plans"]["stream"] = {
        "models": ["gpt-3.5-turbo"],
        "limits": [{"scope": "key", "requests": STREAM_LIMIT, "per": "1h",
                    "on_store_error": mode}],
    }  # fmt: skip
    doc["plans"]["exact"] = {
        "models": ["gpt-3.5-turbo"],
        "limits": [{"scope": "key", "requests": EXACT_LIMIT, "per": "1m",
                    "on_store_error": mode}],
    }  # fmt: skip
    return doc


@dataclass(frozen=True)
class Keys:
    database: str
    secret: str
    stream: str
    exact: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Keys:
    """Keys are issued once (each CLI call costs a second) into a database every test's
    gateway opens with the same secret. Every test has its own Redis and gateway, so
    every counter and local bucket starts fresh anyway."""
    issuer = Gateway(tmp_path_factory.mktemp("keys"), fault_policy(upstream, "memory://", "open"))
    return Keys(
        issuer.doc["database"]["url"],
        issuer.env["QUOTAGATE_SECRET"],
        issuer.tenant_key("streamer", "stream"),
        issuer.tenant_key("counter", "exact"),
    )


@pytest.fixture
def start_gateway(
    tmp_path: Path, upstream: str, keys: Keys, redis_server: RedisServer
) -> Iterator[Callable[[str], Gateway]]:
    started: list[Gateway] = []

    def start(mode: str) -> Gateway:
        doc = fault_policy(upstream, redis_server.url, mode)
        doc["database"] = {"url": keys.database}
        gw = Gateway(tmp_path / "gateway", doc, {"QUOTAGATE_SECRET": keys.secret})
        started.append(gw.start())
        return gw

    yield start
    for gw in started:
        gw.stop()


@dataclass(frozen=True, slots=True)
class Reply:
    started: float
    latency: float
    status: int  # 0: no HTTP answer at all
    response: httpx.Response | None

    @property
    def ended(self) -> float:
        return self.started + self.latency


async def send(client: httpx.AsyncClient, base_url: str, key: str) -> Reply:
    started = time.monotonic()
    try:
        response = await client.post(base_url + CHAT, json=BODY, headers=auth(key))
    except httpx.HTTPError:
        return Reply(started, time.monotonic() - started, 0, None)
    return Reply(started, time.monotonic() - started, response.status_code, response)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Stream:
    """``WORKERS`` concurrent senders on one key, every reply recorded, until the block
    ends. Each worker sends every ``PACE`` seconds (or back to back when a request takes
    longer), so that latency measures the gateway and not a queue: twenty workers flat
    out saturate a 2-core machine and add ~200 ms of queueing at p95."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, key: str) -> None:
        self.replies: list[Reply] = []
        self._send = lambda: send(client, base_url, key)
        self._stop = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Stream:
        self._workers = [asyncio.create_task(self._keep_sending()) for _ in range(WORKERS)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._workers)

    async def _keep_sending(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self.replies.append(await self._send())
            due += PACE
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def sent_since(self, moment: float) -> int:
        return sum(r.started >= moment for r in self.replies)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {WAIT}s")
        await asyncio.sleep(0.01)


async def wait_recovered(client: httpx.AsyncClient, gw: Gateway, probe_key: str) -> None:
    """Until ``/readyz`` sees the store and the breaker has closed again; the breaker
    closes only on a request's successful store call, so each poll sends one."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        await send(client, gw.base_url, probe_key)
        body = (await client.get(gw.base_url + "/readyz")).json()
        if body["store"] == "ok" and body["store_breaker"] == "closed":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"store not back within {WAIT}s: {body}")


async def wait_store_seen(client: httpx.AsyncClient, gw: Gateway) -> None:
    """Until ``/readyz`` pings the store successfully."""
    deadline = time.monotonic() + WAIT
    while (await client.get(gw.base_url + "/readyz")).json()["store"] != "ok":
        if time.monotonic() > deadline:
            raise TimeoutError(f"store not seen within {WAIT}s")
        await asyncio.sleep(0.05)


async def burst(client: httpx.AsyncClient, gw: Gateway, key: str) -> list[Reply]:
    return list(await asyncio.gather(*(send(client, gw.base_url, key) for _ in range(WORKERS))))


def counter(gw: Gateway, name: str) -> dict[str, float]:
    """A one-label counter from ``/metrics``, by label value."""
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    series = re.compile(rf'^{name}_total\{{\w+="([^"]*)"\}} (\S+)$', re.M)
    return {label: float(value) for label, value in series.findall(text)}


async def assert_exact_enforcement(client: httpx.AsyncClient, gw: Gateway, key: str) -> None:
    """A key never used before gets exactly its 10 a minute, all decided by Redis."""
    before = counter(gw, DEGRADED)
    statuses = [(await send(client, gw.base_url, key)).status for _ in range(EXACT_ATTEMPTS)]
    assert statuses == [200] * EXACT_LIMIT + [429] * (EXACT_ATTEMPTS - EXACT_LIMIT)
    assert counter(gw, DEGRADED) == before


DURATION = "quotagate_request_duration_seconds"


def durations(gw: Gateway) -> dict[float, float]:
    """The gateway's own request-duration histogram for chat completions: cumulative count by
    bucket bound. Measured inside the gateway, it leaves out the test client's own
    queueing, which on a busy 2-core machine adds hundreds of milliseconds to what a
    Python client measures at ~200 requests/s."""
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    labels = r'endpoint="chat\.completions",le="([^"]+)"'
    series = re.compile(rf"^{DURATION}_bucket\{{{labels}\}} (\S+)$", re.M)
    return {float(le): float(count) for le, count in series.findall(text)}


def circuit_open(gw: Gateway) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    found = re.search(r"^quotagate_store_circuit_open (\S+)$", text, re.M)
    assert found is not None, "quotagate_store_circuit_open not exported"
    return float(found.group(1))


def assert_bounded_latency(before: dict[float, float], after: dict[float, float]) -> None:
    """Requests the gateway answered between two scrapes: 95% within 250 ms and none
    over 1 s, i.e. nobody waits on the dead store for more than its 50 ms timeout plus
    the machine's own noise (the histogram's bounds: 0.1, 0.25, 0.5, 1, 2.5 s)."""
    within = {le: after[le] - before.get(le, 0.0) for le in after}
    total = within[float("inf")]
    assert total > 0
    assert within[1.0] == total, within
    assert within[0.25] >= 0.95 * total, within


def error_of(reply: Reply) -> dict[str, Any]:
    assert reply.response is not None
    body = reply.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@dataclass(frozen=True)
class Outage:
    replies: list[Reply]
    killed: float
    restarted: float
    readyz_down: httpx.Response
    durations_at_kill: dict[float, float]
    durations_at_restart: dict[float, float]
    circuit: tuple[float, float]  # quotagate_store_circuit_open: while down, recovered

    @property
    def down(self) -> list[Reply]:
        """Requests sent after Redis died and answered before it was restarted."""
        return [r for r in self.replies if r.started >= self.killed and r.ended < self.restarted]


async def kill_mid_traffic(gw: Gateway, redis: RedisServer, keys: Keys) -> Outage:
    assert redis.proc is not None
    limits = httpx.Limits(max_connections=WORKERS + 2)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        # Scraped before the traffic, not between it and the kill: that scrape could let
        # the stream use up its 50 requests first, and a refusal known before the outage
        # is then answered 429 from the negative cache, never reaching the dead store.
        at_kill = await asyncio.to_thread(durations, gw)
        async with Stream(client, gw.base_url, keys.stream) as stream:
            await wait_until(lambda: len(stream.replies) >= WORKERS, "traffic before the kill")
            assert all(r.status == 200 for r in stream.replies), "the key ran out before the kill"
            redis.proc.kill()
            redis.proc.wait()
            killed = time.monotonic()
            # Enough requests to run the local bucket dry and see it refuse.
            enough = 3 * STREAM_LIMIT
            await wait_until(lambda: stream.sent_since(killed) >= enough, "traffic while down")
            readyz_down = await client.get(gw.base_url + "/readyz")
            at_restart = await asyncio.to_thread(durations, gw)
            circuit_down = await asyncio.to_thread(circuit_open, gw)
            restarted = time.monotonic()
            await asyncio.to_thread(redis.start)
            await wait_store_seen(client, gw)
        # The breaker is awaited once the stream has stopped: a concurrent wave right
        # after a restart trips on dead pooled links and may re-open it (see
        # test_first_burst_after_a_restart_is_decided_by_redis).
        await wait_recovered(client, gw, keys.stream)
        circuit_back = await asyncio.to_thread(circuit_open, gw)
        await assert_exact_enforcement(client, gw, keys.exact)
    circuit = (circuit_down, circuit_back)
    return Outage(stream.replies, killed, restarted, readyz_down, at_kill, at_restart, circuit)


def assert_open(down: list[Reply]) -> None:
    assert {r.status for r in down} == {200}


def assert_closed(down: list[Reply]) -> None:
    assert {r.status for r in down} == {503}
    for reply in down:
        assert error_of(reply)["code"] == "limits_unavailable"
        assert reply.response is not None and reply.response.headers["retry-after"] == "1"


def assert_local(down: list[Reply]) -> None:
    """The per-instance bucket (50 ÷ 1 instance) admits, then refuses for good: it
    refills one request every 72 s. Up to WORKERS requests in flight at the kill may
    have taken from it before the ones counted here."""
    assert {r.status for r in down} == {200, 429}
    admitted = sum(r.status == 200 for r in down)
    assert STREAM_LIMIT - WORKERS <= admitted <= STREAM_LIMIT
    first_refusal = min(r.ended for r in down if r.status == 429)
    assert all(r.status == 429 for r in down if r.started > first_refusal)
    refused = next(r for r in down if r.status == 429)
    assert error_of(refused)["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("mode", "check_down", "allowed"),
    [
        ("open", assert_open, {200, 429}),
        ("closed", assert_closed, {200, 429, 503}),
        ("local", assert_local, {200, 429}),
    ],
)
async def test_redis_killed_mid_traffic(
    start_gateway: Callable[[str], Gateway],
    redis_server: RedisServer,
    keys: Keys,
    mode: str,
    check_down: Callable[[list[Reply]], None],
    allowed: set[int],
) -> None:
    gw = start_gateway(mode)
    outage = await kill_mid_traffic(gw, redis_server, keys)
    down = outage.down
    assert len(down) >= 2 * STREAM_LIMIT
    # 429 appears after the restart too: the restarted Redis enforces again.
    assert {r.status for r in outage.replies} <= allowed
    check_down(down)
    assert_bounded_latency(outage.durations_at_kill, outage.durations_at_restart)
    # What the client saw, loosely: no request waited seconds (a connect timeout).
    assert max(r.latency for r in down) < 2.0
    assert outage.readyz_down.json()["store"] == "down"
    assert outage.circuit == (1.0, 0.0)  # open while Redis was dead, closed once back
    counted = counter(gw, DEGRADED)
    assert counted.get(mode, 0) >= len(down)
    assert all(value == 0 for other, value in counted.items() if other != mode)
    # Logged once per 10 s interval, not once per degraded request.
    assert 1 <= gw.log_text().count(UNAVAILABLE_LINE) <= 2


async def test_redis_frozen_costs_at_most_the_timeout(
    start_gateway: Callable[[str], Gateway], redis_server: RedisServer, keys: Keys
) -> None:
    gw = start_gateway("local")
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        warm = await burst(client, gw, keys.stream)
        assert {r.status for r in warm} == {200}  # the pool's links are open when it freezes
        at_freeze = await asyncio.to_thread(durations, gw)
        os.kill(pid, signal.SIGSTOP)
        froze = time.monotonic()
        try:
            async with Stream(client, gw.base_url, keys.stream) as stream:
                await wait_until(lambda: len(stream.replies) >= 200, "traffic while frozen")
            at_thaw = await asyncio.to_thread(durations, gw)
        finally:
            os.kill(pid, signal.SIGCONT)
        frozen_for = time.monotonic() - froze
        frozen = stream.replies
        # Every decision was local: a fresh bucket of 50, refilled once every 72 s.
        assert [r.status for r in frozen].count(200) == STREAM_LIMIT
        assert {r.status for r in frozen} == {200, 429}
        # Inside the gateway: none over 1 s, half within 100 ms (only the first wave
        # waits out the 50 ms timeout). The client's own clock only loosely.
        within = {le: at_thaw[le] - at_freeze.get(le, 0.0) for le in at_thaw}
        assert within[1.0] == within[float("inf")] >= len(frozen), within
        assert within[0.1] >= 0.5 * within[float("inf")], within
        assert max(r.latency for r in frozen) < 2.0
        await wait_recovered(client, gw, keys.stream)
        await assert_exact_enforcement(client, gw, keys.exact)
    assert counter(gw, DEGRADED)["local"] >= len(frozen)
    # Only the first wave of WORKERS waited out the timeout; then the open breaker let
    # one probe through per cooldown. Without it, every one of the ~200 requests would
    # have waited 50 ms for the frozen store.
    probes = int(frozen_for / COOLDOWN) + 1
    assert sum(counter(gw, STORE_ERRORS).values()) <= WORKERS + probes


async def test_first_burst_after_a_restart_is_decided_by_redis(
    start_gateway: Callable[[str], Gateway], redis_server: RedisServer, keys: Keys
) -> None:
    """Once Redis is back and ``/readyz`` says so, a burst is decided by Redis: no
    request may fail on a pooled link that died with the old server ("closed" turns
    each such failure into a 503 ``limits_unavailable``)."""
    gw = start_gateway("closed")
    assert redis_server.proc is not None
    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        warm = await burst(client, gw, keys.stream)
        assert {r.status for r in warm} == {200}  # several pooled links to Redis
        redis_server.proc.kill()
        redis_server.proc.wait()
        await asyncio.to_thread(redis_server.start)
        await wait_store_seen(client, gw)
        statuses = sorted(r.status for r in await burst(client, gw, keys.exact))
    assert statuses == [200] * EXACT_LIMIT + [429] * (WORKERS - EXACT_LIMIT)
    assert not any(counter(gw, DEGRADED).values())


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("local", 200), ("closed", 503)])
async def test_readyz_reports_the_store(
    start_gateway: Callable[[str], Gateway], redis_server: RedisServer, mode: str, status: int
) -> None:
    gw = start_gateway(mode)
    readyz = gw.base_url + "/readyz"
    async with httpx.AsyncClient(timeout=10) as client:
        healthy = await client.get(readyz)
        assert (healthy.status_code, healthy.json()["store"]) == (200, "ok")
        assert redis_server.proc is not None
        redis_server.proc.kill()
        redis_server.proc.wait()
        down = await client.get(readyz)
        assert down.json()["store"] == "down"
        assert down.status_code == status
        assert down.json()["status"] == ("ready" if status == 200 else "not_ready")
        await asyncio.to_thread(redis_server.start)
        replies: list[httpx.Response] = []

        async def store_back() -> bool:
            replies.append(await client.get(readyz))
            return replies[-1].json()["store"] == "ok"

        deadline = time.monotonic() + WAIT
        while not await store_back():
            assert time.monotonic() < deadline, replies[-1].json()
            await asyncio.sleep(0.05)
        assert (replies[-1].status_code, replies[-1].json()["status"]) == (200, "ready")


async def test_readyz_answers_promptly_while_redis_is_frozen(
    start_gateway: Callable[[str], Gateway], redis_server: RedisServer
) -> None:
    """A readiness probe gives up after 1 s by default (Kubernetes): an instance whose
    limits are all local must still be reported ready, not time out, while Redis hangs."""
    gw = start_gateway("local")
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(gw.base_url + "/readyz")).json()["store"] == "ok"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = await client.get(gw.base_url + "/readyz")
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
    assert (frozen.status_code, frozen.json()["store"]) == (200, "down")
    assert took < 0.5, f"/readyz took {took:.2f}s while Redis was frozen"
