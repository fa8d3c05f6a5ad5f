"""Reservations outlive the gateway that made them, and no ledger record is lost.

A gateway killed (SIGKILL) in the middle of a stream never settles its reservation:
another live instance reaps it once ``accounting.reservation_ttl`` has passed, writes
it to the ledger as ``unsettled`` at the reserved amount, and the budget stays charged
for it. A gateway stopped (SIGTERM) with requests in flight finishes them, settles
them and writes every one of their ledger rows before it exits, on PostgreSQL and on
SQLite.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from harness import Gateway, Process, policy, start_mock
from quotagate.budget.estimate import prompt_tokens
from quotagate.budget.pricing import format_money

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
CHAT = "/v1/chat/completions"
INPUT_PER_1M, OUTPUT_PER_1M = 10, 20  # µ$ per token: costs are whole micro-units
BUDGET = 1_000_000  # 1 USD: never the limiting factor here
MAX_TOKENS = 60
TTL = 2.0  # accounting.reservation_ttl of the kill test
TOKENS_PER_SECOND = 5  # the private mock: a 50-token answer streams for ~10 s


def chat(content: str, model: str = "metered-slow", stream: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }
    if stream:  # the client sees the usage chunk too
        payload["stream_options"] = {"include_usage": True}
    return payload


def reserved_micros(payload: dict[str, Any]) -> int:
    estimate = prompt_tokens(payload, "chat.completions")
    return estimate * INPUT_PER_1M + MAX_TOKENS * OUTPUT_PER_1M


def metered_policy(
    upstream: str,
    slow_upstream: str,
    prefix: str,
    database: dict[str, str],
    ttl: str,
    flaky_upstream: str | None = None,
) -> dict[str, Any]:
    doc = policy(upstream)
    price = {"input_per_1m": INPUT_PER_1M, "output_per_1m": OUTPUT_PER_1M}
    doc["models"]["metered"] = {"price": price, "deployments": [{"url": upstream}]}
    doc["models"]["metered-slow"] = {"price": price, "deployments": [{"url": slow_upstream}]}
    if flaky_upstream is not None:  # failing, it falls back to metered-slow
        doc["models"]["metered-flaky"] = {
            "price": price, "deployments": [{"url": flaky_upstream}], "fallback": ["metered-slow"],
        }  # fmt: skip
    metered = [m for m in doc["models"] if m.startswith("metered")]
    doc["plans"]["budgeted"] = {
        "models": metered,
        "budget": {"amount": BUDGET / 1_000_000, "currency": "USD", "per": "month"},
    }
    if flaky_upstream is not None:  # a quota on metered-flaky alone: its fallback is free
        quota = {"scope": "tenant", "model": "metered-flaky", "tokens": 10**9, "per": "day"}
        doc["plans"]["flaky-quota"] = {"models": metered, "quotas": [quota]}
    doc["store"] = {"url": REDIS_URL, "prefix": prefix, "timeout": "5s"}
    doc["database"] = database
    doc["accounting"] = {"reservation_ttl": ttl, "ledger": {"flush_interval": "200ms"}}
    return doc


async def pg(query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


def sqlite_rows(path: str, tenant_id: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        query = "SELECT * FROM qg_ledger WHERE tenant_id = ?"
        return [dict(r) for r in conn.execute(query, (tenant_id,))]


@dataclass
class Deployment:
    """A gateway (and its replicas) on Redis and a database of its own."""

    gateway: Gateway
    prefix: str

    def tenant(self, name: str, plan: str = "budgeted") -> tuple[str, str]:
        gw = self.gateway
        created = gw.cli("tenants", "create", name, "--plan", plan, "--json")
        keys = gw.cli("keys", "create", "--tenant", name, "--json")
        return str(json.loads(created)["id"]), str(json.loads(keys)["key"])

    def ledger(self, tenant_id: str) -> list[dict[str, Any]]:
        database = self.gateway.doc["database"]
        if "schema" in database:
            query = f'SELECT * FROM "{database["schema"]}".qg_ledger WHERE tenant_id = $1'
            return asyncio.run(pg(query, tenant_id))
        return sqlite_rows(database["url"].removeprefix("sqlite+aiosqlite:///"), tenant_id)

    def reservations(self, tenant_id: str) -> int:
        with redis.Redis.from_url(REDIS_URL) as client:
            return int(client.zcard(f"{self.prefix}rs:{{t:{tenant_id}}}"))


def poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.05)  # poll interval
    return result


@pytest.fixture(scope="module")
def slow_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_mock(
        tmp_path_factory.mktemp("slow-mock"), "--tokens-per-second", str(TOKENS_PER_SECOND)
    )
    yield proc
    proc.stop()


@pytest.fixture
def deploy(
    tmp_path: Path, upstream: str, slow_mock: Process
) -> Iterator[Callable[..., Deployment]]:
    """Start a gateway on a database (``postgres`` or ``sqlite``) with a reservation
    TTL; its Redis keys and PostgreSQL schema go with the test."""
    started: list[tuple[Deployment, str | None]] = []

    def start(database: str, ttl: str, flaky_upstream: str | None = None) -> Deployment:
        prefix = f"qg-test-{secrets.token_hex(6)}:"
        schema = f"qg_t_{secrets.token_hex(6)}" if database == "postgres" else None
        db = {"url": PG_URL, "schema": schema} if schema else {
            "url": f"sqlite+aiosqlite:///{tmp_path}/ledger.db"}  # fmt: skip
        doc = metered_policy(upstream, slow_mock.base_url + "/v1", prefix, db, ttl, flaky_upstream)
        deployment = Deployment(Gateway(tmp_path / "gateway", doc), prefix)
        started.append((deployment, schema))
        deployment.gateway.start()
        return deployment

    yield start
    for deployment, schema in started:
        deployment.gateway.stop()
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=deployment.prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        if schema:
            asyncio.run(pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def reaped_total(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("quotagate_reservations_reaped_total")
    )


@pytest.mark.postgres
def test_a_killed_gateways_reservation_is_reaped_unsettled_and_stays_charged(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy("postgres", f"{TTL:g}s")
    survivor = d.gateway.replica()
    tenant_id, key = d.tenant("killed-mid-stream")
    victim = d.gateway.process
    assert victim is not None
    long_answer = chat("[[mock:tokens=50]] a long answer", stream=True)
    headers = {"authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=30, headers=headers) as client,
        client.stream("POST", d.gateway.base_url + CHAT, json=long_answer) as resp,
    ):
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        lines = resp.iter_lines()  # kept: a dropped iterator closes the response
        assert next(lines).startswith("data: {")
        assert d.reservations(tenant_id) == 1  # the stream is under way, reserved
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait(timeout=10)

    def unsettled_row() -> dict[str, Any] | None:
        rows = [r for r in d.ledger(tenant_id) if r["request_id"] == request_id]
        return rows[0] if rows and d.reservations(tenant_id) == 0 else None

    # Due TTL after it was made; the survivor reaps every TTL/4; its writer flushes.
    row = poll(unsettled_row, 4 * TTL, "the killed gateway's reservation reaped")
    assert time.monotonic() - killed_at <= 4 * TTL
    reserved = reserved_micros(long_answer)
    assert row["status"] == "unsettled", row
    assert row["reserved_tokens"] > 0, row
    assert row["cost_micros"] == row["reserved_micros"] == reserved, row
    assert reaped_total(survivor.base_url) == 1
    assert len(d.ledger(tenant_id)) == 1

    # Not forgiven: the next request sees the budget less the killed reservation and
    # its own.
    quick = chat("[[mock:tokens=3]] hi", model="metered")
    answer = httpx.post(survivor.base_url + CHAT, json=quick, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    remaining = BUDGET - reserved - reserved_micros(quick)
    assert answer.headers["x-quotagate-budget-remaining"] == format_money(remaining)


def test_a_killed_gateways_fallback_is_reaped_naming_the_model_that_served_it(
    deploy: Callable[..., Deployment], flaky: Process, slow_mock: Process
) -> None:
    """metered-flaky fails after the limits admitted the request as its, so
    metered-slow serves it (``Limit.move``); the gateway is killed mid-stream. The
    reaped row names metered-slow and its deployment: the reservation was made again
    for the fallback, and the asked model's removed (one row, one reservation)."""
    d = deploy("sqlite", f"{TTL:g}s", flaky.base_url + "/v1")
    d.gateway.replica()  # the survivor, which reaps
    tenant_id, key = d.tenant("killed-after-a-fallback")
    victim = d.gateway.process
    assert victim is not None
    ask = chat("[[mock:tokens=50]] a long answer", model="metered-flaky", stream=True)
    with streamed_by_the_fallback(d, flaky, key, ask) as request_id:
        assert d.reservations(tenant_id) == 1
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)

    def unsettled_row() -> dict[str, Any] | None:
        rows = [r for r in d.ledger(tenant_id) if r["request_id"] == request_id]
        return rows[0] if rows and d.reservations(tenant_id) == 0 else None

    row = poll(unsettled_row, 4 * TTL, "the killed gateway's reservation reaped")
    assert row["status"] == "unsettled", row
    assert (row["model"], row["deployment"]) == ("metered-slow", slow_mock.base_url + "/v1")
    assert row["cost_micros"] == row["reserved_micros"] == reserved_micros(ask), row
    assert len(d.ledger(tenant_id)) == 1


def test_a_fallback_that_meters_nothing_holds_no_reservation(
    deploy: Callable[..., Deployment], flaky: Process
) -> None:
    """Only metered-flaky has a quota: once metered-slow serves in its place, nothing
    is reserved while it answers, and the request's own row names metered-slow (the
    client left after the first chunk: client_disconnected)."""
    d = deploy("sqlite", f"{TTL:g}s", flaky.base_url + "/v1")
    tenant_id, key = d.tenant("free-fallback", plan="flaky-quota")
    ask = chat("[[mock:tokens=10]] an answer", model="metered-flaky", stream=True)
    with streamed_by_the_fallback(d, flaky, key, ask) as request_id:
        assert d.reservations(tenant_id) == 0

    def row() -> dict[str, Any] | None:
        rows = [r for r in d.ledger(tenant_id) if r["request_id"] == request_id]
        return rows[0] if rows else None

    written = poll(row, 10, "the request's ledger row")
    assert (written["status"], written["model"]) == ("client_disconnected", "metered-slow")


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[Process]:
    """A private mock for metered-flaky, told to fail by ``streamed_by_the_fallback``."""
    proc = start_mock(tmp_path)
    yield proc
    proc.stop()


@contextmanager
def streamed_by_the_fallback(
    d: Deployment, flaky: Process, key: str, ask: dict[str, Any]
) -> Iterator[str]:
    """``ask`` for metered-flaky, whose next answer is a 500: metered-slow streams it
    on the retry. Yields the request id once the first chunk has arrived."""
    httpx.post(
        f"{flaky.base_url}/_mock/faults", json={"fail_next": 1, "error_status": 500}, timeout=5
    ).raise_for_status()
    headers = {"authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=30, headers=headers) as client,
        client.stream("POST", d.gateway.base_url + CHAT, json=ask) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["x-quotagate-model"] == "metered-slow"
        lines = resp.iter_lines()  # kept: a dropped iterator closes the response
        assert next(lines).startswith("data: {")
        yield resp.headers["x-request-id"]


@dataclass
class Sent:
    status: int
    request_id: str
    usage: dict[str, int] | None


async def send(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> Sent:
    if not payload["stream"]:
        resp = await client.post(url + CHAT, json=payload)
        return Sent(
            resp.status_code, resp.headers.get("x-request-id", ""), resp.json().get("usage")
        )
    usage = None
    async with client.stream("POST", url + CHAT, json=payload) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return Sent(resp.status_code, resp.headers.get("x-request-id", ""), usage)


async def stop_while_in_flight(d: Deployment, tenant_id: str, key: str, n: int) -> list[Sent]:
    """``n`` slow requests (half of them streams of ~3 s, half answers after ~3 s);
    SIGTERM once every one of them holds a reservation, i.e. is in flight."""
    payloads = [
        chat("[[mock:ttft=2500]] [[mock:tokens=5]] wait") if i % 2 else
        chat("[[mock:tokens=15]] stream slowly", stream=True)
        for i in range(n)
    ]  # fmt: skip
    process = d.gateway.process
    assert process is not None
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        sent = [asyncio.create_task(send(client, d.gateway.base_url, p)) for p in payloads]
        deadline = time.monotonic() + 10
        while d.reservations(tenant_id) < n:
            assert time.monotonic() < deadline, "the requests never were all in flight"
            await asyncio.sleep(0.02)  # poll interval
        process.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            answers = await asyncio.gather(*sent)
            code = await asyncio.to_thread(process.proc.wait, 30)
    assert code == 0, process.log.read_text()[-3000:]
    return list(answers)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_sigterm_writes_every_in_flight_requests_ledger_row(
    deploy: Callable[..., Deployment], database: str
) -> None:
    d = deploy(database, "15m")
    tenant_id, key = d.tenant("stopped-in-flight")
    n = 8
    answers = asyncio.run(stop_while_in_flight(d, tenant_id, key, n))
    assert [a.status for a in answers] == [200] * n
    assert all(a.usage for a in answers), answers
    # Read once the process has exited: nothing may arrive later.
    rows = {r["request_id"]: r for r in d.ledger(tenant_id)}
    assert sorted(rows) == sorted(a.request_id for a in answers)
    for answer in answers:
        row = rows[answer.request_id]
        assert answer.usage is not None
        cost = (
            answer.usage["prompt_tokens"] * INPUT_PER_1M
            + answer.usage["completion_tokens"] * OUTPUT_PER_1M
        )
        assert (row["status"], row["http_status"], row["cost_micros"]) == ("ok", 200, cost)
    assert d.reservations(tenant_id) == 0, "settled before exit, none left to reap"
    spool = Path(d.gateway.env["QUOTAGATE_DATA_DIR"]) / "spool"
    assert not list(spool.glob("*.jsonl")), "records spooled instead of written"
