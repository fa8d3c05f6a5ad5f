"""Concurrency leases in Redis, shared by two gateway instances.

A tenant may have 3 requests in flight across every instance. A lease is released when
its response ends; a gateway killed with leases held cannot release them, and they
free themselves after ``lease_ttl``; a Redis frozen mid-request must not leave any
behind once it resumes.
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
import redis

from harness import Gateway, Process, policy, redis_prefix
from redis_servers import RedisServer

CHAT = "/v1/chat/completions"
IN_FLIGHT = 3  # plans.leased: concurrent requests per tenant
PREFIX = redis_prefix()


def chat(prompt: str) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": prompt}]}


QUICK, HANG, SLOW = chat("hi"), chat("[[mock:hang]]"), chat("[[mock:ttft=500]] hi")


def lease_policy(
    upstream: str, store_url: str, lease_ttl: str, on_store_error: str, timeout: str
) -> dict[str, Any]:
    doc = policy(upstream)
    # Hung requests must stay in flight for the whole test, not end in a 504.
    deployment = doc["models"]["gpt-3.5-turbo"]["deployments"][0]
    deployment["timeouts"] = {"first_byte": "30s", "total": "60s"}
    doc["store"] = {"url": store_url, "prefix": PREFIX, "timeout": timeout}
    doc["plans"]["leased"] = {
        "models": ["gpt-3.5-turbo"],
        "limits": [{"scope": "tenant", "concurrent": IN_FLIGHT, "lease_ttl": lease_ttl,
                    "on_store_error": on_store_error}],
    }  # fmt: skip
    return doc


@dataclass(frozen=True)
class Key:
    database: str
    secret: str
    key: str


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Key:
    """One key, issued once into a database each test's gateways share (each CLI call
    costs a second); every test has its own Redis, so no lease outlives its test."""
    doc = lease_policy(upstream, "memory://", "1m", "closed", "1s")
    issuer = Gateway(tmp_path_factory.mktemp("keys"), doc)
    key = issuer.tenant_key("leaseholder", "leased")
    return Key(issuer.doc["database"]["url"], issuer.env["QUOTAGATE_SECRET"], key)


@pytest.fixture
def start_gateway(
    tmp_path: Path, upstream: str, issued: Key, redis_server: RedisServer
) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(lease_ttl: str, on_store_error: str = "closed", timeout: str = "2s") -> Gateway:
        """By default a generous store deadline (a loaded 2-core machine can miss 25 ms)
        and "closed": a decision taken without Redis would count one instance's leases
        only, and "closed" makes that a visible 503 rather than a wrong 200."""
        doc = lease_policy(upstream, redis_server.url, lease_ttl, on_store_error, timeout)
        doc["database"] = {"url": issued.database}
        gw = Gateway(tmp_path / "gateway", doc, {"QUOTAGATE_SECRET": issued.secret})
        started.append(gw.start())
        return gw

    yield start
    for gw in started:
        gw.stop()


class Client:
    """Chat requests with the tenant's key through any instance."""

    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        self.http = http
        self.headers = {"authorization": f"Bearer {key}"}

    async def post(self, base_url: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(base_url + CHAT, json=body, headers=self.headers)

    async def status(self, base_url: str, body: dict[str, Any] = QUICK) -> int:
        return (await self.post(base_url, body)).status_code


async def mock_hangs(http: httpx.AsyncClient, mock: Process) -> int:
    return int((await http.get(mock.base_url + "/_mock/stats")).json()["hangs"])


async def wait_hanging(http: httpx.AsyncClient, mock: Process, count: int) -> None:
    """Until the mock holds ``count`` hung requests: their leases are taken by then."""
    deadline = time.monotonic() + 10
    while await mock_hangs(http, mock) < count:
        assert time.monotonic() < deadline, "hung requests never reached the mock"
        await asyncio.sleep(0.02)


def assert_concurrency_refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("Too many concurrent requests on tenant: limit 3")


def leases_held(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as client:
        return sum(client.zcard(k) for k in client.scan_iter(match=PREFIX + "*concurrent*"))


async def wait_leases(server: RedisServer, count: int) -> None:
    """Until Redis holds exactly ``count`` leases (a lease is released just after its
    response has gone out, so a client may be a moment ahead of it)."""
    deadline = time.monotonic() + 5
    while (held := leases_held(server)) != count:
        assert time.monotonic() < deadline, f"{held} leases held, expected {count}"
        await asyncio.sleep(0.02)


async def test_leases_are_released_when_requests_complete(
    start_gateway: Callable[..., Gateway], redis_server: RedisServer, issued: Key
) -> None:
    # A TTL far beyond the test: only a release can give a lease back.
    gw = start_gateway("10m")
    other = gw.replica().base_url
    async with httpx.AsyncClient(timeout=10) as http:
        client = Client(http, issued.key)
        for base_url in (gw.base_url, other, gw.base_url):
            assert await client.status(base_url) == 200
        await wait_leases(redis_server, 0)
        # Three at once, over both instances, each held ~0.5 s: all fit.
        calls = [client.status(url, SLOW) for url in (gw.base_url, other, gw.base_url)]
        slow = asyncio.gather(*calls)
        await wait_leases(redis_server, IN_FLIGHT)
        assert_concurrency_refused(await client.post(other, QUICK))
        assert await slow == [200] * IN_FLIGHT
        await wait_leases(redis_server, 0)
        assert await client.status(other) == 200


async def test_leases_of_a_killed_gateway_expire_after_their_ttl(
    start_gateway: Callable[..., Gateway], issued: Key, mock_llm: Process
) -> None:
    gw = start_gateway("2s")
    assert gw.process is not None
    doomed, survivor = gw.process, gw.replica().base_url
    async with httpx.AsyncClient(timeout=30) as http:
        client = Client(http, issued.key)
        hangs = await mock_hangs(http, mock_llm)
        hung = [asyncio.create_task(client.post(doomed.base_url, HANG)) for _ in range(IN_FLIGHT)]
        try:
            await wait_hanging(http, mock_llm, hangs + IN_FLIGHT)
            assert_concurrency_refused(await client.post(survivor, QUICK))
            doomed.proc.kill()  # SIGKILL: no chance to release anything
            doomed.proc.wait()
            killed = time.monotonic()
            assert_concurrency_refused(await client.post(survivor, QUICK))
            while (status := await client.status(survivor)) != 200:
                assert status == 429
                assert time.monotonic() - killed < 4, "dead gateway's leases never expired"
                await asyncio.sleep(0.05)
            # All three expired, not just one: three fit at once again.
            assert (
                await asyncio.gather(*(client.status(survivor, SLOW) for _ in range(IN_FLIGHT)))
                == [200] * IN_FLIGHT
            )
        finally:
            for task in hung:
                task.cancel()
            await asyncio.gather(*hung, return_exceptions=True)


async def release_failures(http: httpx.AsyncClient, gw: Gateway) -> float:
    text = (await http.get(gw.base_url + "/metrics")).text
    found = re.search(r'^quotagate_store_errors_total\{error="release"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_frozen_store_leaves_no_phantom_leases(
    start_gateway: Callable[..., Gateway], redis_server: RedisServer, issued: Key
) -> None:
    """Requests served (locally) while Redis is frozen must not hold slots once it is
    back: the tenant gets its 3 concurrent requests again, not after ``lease_ttl``."""
    gw = start_gateway("10m", on_store_error="local", timeout="50ms")
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    async with httpx.AsyncClient(timeout=10) as http:
        client = Client(http, issued.key)
        warm = await asyncio.gather(*(client.status(gw.base_url) for _ in range(IN_FLIGHT)))
        assert warm == [200] * IN_FLIGHT  # the pool's links are open when it freezes
        await wait_leases(redis_server, 0)
        os.kill(pid, signal.SIGSTOP)
        try:
            served = await asyncio.gather(*(client.status(gw.base_url) for _ in range(IN_FLIGHT)))
            assert served == [200] * IN_FLIGHT  # decided by the local twin
            # Frozen until the gateway has given up releasing them in Redis.
            deadline = time.monotonic() + 10
            while await release_failures(http, gw) < IN_FLIGHT:
                assert time.monotonic() < deadline, "the releases never failed"
                await asyncio.sleep(0.02)
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while (await http.get(gw.base_url + "/readyz")).json()["store_breaker"] != "closed":
            assert time.monotonic() < deadline, "the breaker never closed"
            await client.status(gw.base_url)  # the breaker closes on a request's store call
            await asyncio.sleep(0.05)
        # The acquisitions that timed out were still queued in Redis and ran when it
        # resumed; the releases that timed out never arrived. Those leases are the
        # gateway's to give back, not left for lease_ttl (10 minutes) to expire.
        await wait_leases(redis_server, 0)
        slots = await asyncio.gather(*(client.status(gw.base_url, SLOW) for _ in range(IN_FLIGHT)))
        assert slots == [200] * IN_FLIGHT
