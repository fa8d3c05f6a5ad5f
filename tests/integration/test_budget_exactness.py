"""A money budget shared by four gateway instances is never overspent.

Four real gateway processes share the local Redis and one PostgreSQL schema. One tenant
has a monthly budget that pays for 50 requests of a known cost (a fixed prompt, a fixed
number of completion tokens from the mock); each request reserves more than it will
use (max_tokens above what the mock produces), and 500 of them arrive at once, spread
over the instances. Whatever the interleaving: the ledger's spend stays within the
budget, every answered request has exactly one ledger row and the counter in Redis
holds exactly what the ledger charged; refunds of unused reservations let close to
the full 50 through. The same holds for streams, and for slow streams whose clients
hang up after the first chunk or half-way, after which no reservation is left behind
in Redis. Last, a stream cut late (its usage chunk never arrives, so the gateway
estimates what it produced) is charged no more than its reservation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from harness import Gateway, Process, policy, start_mock
from quotagate.budget.estimate import prompt_tokens
from quotagate.mock_llm.tokenizer import count_chat_tokens

pytestmark = pytest.mark.postgres

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
CHAT = "/v1/chat/completions"

# Every request costs the same: this prompt, exactly COMPLETION tokens back, at prices
# that make a cost an integer number of micro-units (10 µ$ per input token, 20 per
# output token). Long words make the gateway's estimate (~4 characters a token) exceed
# the mock's count (a word a token), so a reservation always covers the real use.
INPUT_PER_1M, OUTPUT_PER_1M = 10, 20
COMPLETION = 40
MAX_TOKENS = 50
CONTENT = (
    f"[[mock:tokens={COMPLETION}]] supercalifragilisticexpialidocious pneumonoultramicroscopic"
)
PROMPT = count_chat_tokens([CONTENT])
COST = PROMPT * INPUT_PER_1M + COMPLETION * OUTPUT_PER_1M  # micro-units, exact
AFFORDABLE = 50
# An answer as long as max_tokens allows, for a client to leave late in the stream.
LATE_CUT_CONTENT = CONTENT.replace(f"tokens={COMPLETION}", f"tokens={MAX_TOKENS}")
BUDGET = AFFORDABLE * COST
REQUESTS, CONCURRENCY = 500, 100
FLOOR = int(AFFORDABLE * 0.8)  # reservations exceed use: a few refusals come early


def body(content: str = CONTENT, model: str = "metered", stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }


def reserved_micros(content: str) -> int:
    estimate = prompt_tokens(body(content), "chat.completions")
    return estimate * INPUT_PER_1M + MAX_TOKENS * OUTPUT_PER_1M


def budget_policy(upstream: str, slow_upstream: str, prefix: str, schema: str) -> dict[str, Any]:
    doc = policy(upstream)
    price = {"input_per_1m": INPUT_PER_1M, "output_per_1m": OUTPUT_PER_1M}
    doc["models"]["metered"] = {"price": price, "deployments": [{"url": upstream}]}
    # The same price on a mock that streams 50 tokens/s: a client can hang up mid-stream.
    doc["models"]["metered-slow"] = {"price": price, "deployments": [{"url": slow_upstream}]}
    doc["plans"]["budgeted"] = {
        "models": ["metered", "metered-slow"],
        "budget": {"amount": BUDGET / 1_000_000, "currency": "USD", "per": "month"},
    }
    # Pays for exactly one reservation of LATE_CUT_CONTENT: no more may be charged.
    doc["plans"]["one-reservation"] = {
        "models": ["metered-slow"],
        "budget": {"amount": reserved_micros(LATE_CUT_CONTENT) / 1_000_000, "per": "month"},
    }
    # A generous store deadline (see test_distributed_limits): exactness is claimed for
    # a healthy store, and the test checks that no decision was degraded.
    doc["store"] = {"url": REDIS_URL, "prefix": prefix, "timeout": "5s"}
    doc["database"] = {"url": PG_URL, "schema": schema}
    doc["accounting"] = {"exhausted_status": 402, "ledger": {"flush_interval": "200ms"}}
    return doc


async def pg(query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def drop_prefix(prefix: str) -> None:
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


@dataclass
class Fleet:
    gateway: Gateway
    urls: list[str]
    prefix: str
    schema: str

    def tenant(self, name: str, plan: str = "budgeted") -> tuple[str, str]:
        """A new tenant on ``plan``: (tenant id, API key)."""
        created = self.gateway.cli("tenants", "create", name, "--plan", plan, "--json")
        keys = self.gateway.cli("keys", "create", "--tenant", name, "--json")
        return str(json.loads(created)["id"]), str(json.loads(keys)["key"])

    def ledger(self, tenant_id: str) -> list[asyncpg.Record]:
        query = f'SELECT * FROM "{self.schema}".qg_ledger WHERE tenant_id = $1'
        return asyncio.run(pg(query, tenant_id))

    def ledger_when(
        self, tenant_id: str, done: Callable[[list[asyncpg.Record]], bool], timeout: float = 20
    ) -> list[asyncpg.Record]:
        """The tenant's rows once ``done`` holds for them (the writers flush every 200 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.ledger(tenant_id)
            if done(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)  # poll interval

    def reservations(self, tenant_id: str) -> int:
        with redis.Redis.from_url(REDIS_URL) as client:
            return int(client.zcard(f"{self.prefix}rs:{{t:{tenant_id}}}"))

    def reservations_when_empty(self, tenant_id: str, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while (held := self.reservations(tenant_id)) and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval
        return held

    def budget_counter(self, tenant_id: str) -> int:
        """What the tenant's budget counter in Redis holds for this month."""
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"{self.prefix}rl:{{t:{tenant_id}}}:*budget*"))
            assert len(keys) == 1, keys
            return int(client.hget(keys[0], "c") or 0)

    def degraded_decisions(self) -> float:
        total = 0.0
        for url in self.urls:
            text = httpx.get(url + "/metrics", timeout=10).text
            total += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("quotagate_limit_degraded_decisions_total")
            )
        return total


@pytest.fixture(scope="module")
def slow_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_mock(tmp_path_factory.mktemp("slow-mock"), "--tokens-per-second", "50")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, upstream: str, slow_mock: Process
) -> Iterator[Fleet]:
    prefix = f"qg-test-{secrets.token_hex(6)}:"
    schema = f"qg_t_{secrets.token_hex(6)}"
    doc = budget_policy(upstream, slow_mock.base_url + "/v1", prefix, schema)
    gateway = Gateway(tmp_path_factory.mktemp("budget-fleet"), doc)
    try:
        gateway.start()
        urls = [gateway.base_url] + [gateway.replica().base_url for _ in range(3)]
        yield Fleet(gateway, urls, prefix, schema)
    finally:
        gateway.stop()
        drop_prefix(prefix)
        asyncio.run(pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@dataclass
class Answer:
    status: int
    request_id: str
    usage: dict[str, int] | None = None
    hung_up: bool = False  # the client left before the end of the stream


async def send_all(
    urls: list[str], key: str, one: Callable[[httpx.AsyncClient, str, int], Any]
) -> list[Answer]:
    """``REQUESTS`` requests, ``CONCURRENCY`` at a time, round-robin over ``urls``."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"authorization": f"Bearer {key}"}
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

        async def bounded(i: int) -> Answer:
            async with gate:
                answer: Answer = await one(client, urls[i % len(urls)], i)
                return answer

        async with asyncio.timeout(120):
            return list(await asyncio.gather(*(bounded(i) for i in range(REQUESTS))))


async def plain(client: httpx.AsyncClient, url: str, i: int) -> Answer:
    response = await client.post(url + CHAT, json=body())
    usage = response.json().get("usage") if response.status_code == 200 else None
    return Answer(response.status_code, response.headers.get("x-request-id", ""), usage)


def streamed(content: str, model: str, leave_after: Callable[[int], int | None]) -> Any:
    """Request ``i`` streams; its client hangs up after ``leave_after(i)`` data chunks
    (None: reads to the end)."""

    async def one(client: httpx.AsyncClient, url: str, i: int) -> Answer:
        chunks, leave = 0, leave_after(i)
        async with client.stream("POST", url + CHAT, json=body(content, model, True)) as resp:
            answer = Answer(resp.status_code, resp.headers.get("x-request-id", ""))
            if resp.status_code != 200:
                await resp.aread()
                return answer
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunks += 1
                if chunks == leave:
                    answer.hung_up = True
                    return answer  # leaving the block closes the connection mid-stream
                answer.usage = json.loads(line[6:]).get("usage") or answer.usage
        return answer

    return one


def check_spend(fleet: Fleet, tenant_id: str, answers: list[Answer], statuses: set[str]) -> None:
    """Within budget, one row per answered request, counter == ledger, nothing held."""
    admitted = [a for a in answers if a.status == 200]
    assert set(Counter(a.status for a in answers)) <= {200, 402}, Counter(a.status for a in answers)
    rows = fleet.ledger_when(tenant_id, lambda rows: len(rows) >= REQUESTS)
    assert len(rows) == REQUESTS, f"{len(rows)} ledger rows for {REQUESTS} requests"
    charged = [r for r in rows if r["status"] in statuses]
    spend = sum(r["cost_micros"] for r in rows)
    assert spend <= BUDGET, f"spent {spend} µ$ of a {BUDGET} µ$ budget"
    assert sum(r["cost_micros"] for r in charged) == spend  # denials cost nothing
    per_request = Counter(r["request_id"] for r in charged)
    assert sorted(per_request) == sorted(a.request_id for a in admitted)
    assert set(per_request.values()) == {1}, "a request with two charged ledger rows"
    assert {r["status"] for r in rows} <= statuses | {"denied"}
    assert all(r["http_status"] == 402 for r in rows if r["status"] == "denied")
    assert fleet.reservations_when_empty(tenant_id) == 0, "reservations left in Redis"
    assert fleet.budget_counter(tenant_id) == spend, "Redis counter differs from the ledger"
    assert fleet.degraded_decisions() == 0


def test_concurrent_requests_never_overspend_the_budget(fleet: Fleet) -> None:
    tenant_id, key = fleet.tenant("spender-plain")
    assert reserved_micros(CONTENT) > COST  # every request reserves more than it uses
    answers = asyncio.run(send_all(fleet.urls, key, plain))
    admitted = [a for a in answers if a.status == 200]
    assert all(a.usage == {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                           "total_tokens": PROMPT + COMPLETION} for a in admitted)  # fmt: skip
    assert FLOOR <= len(admitted) <= AFFORDABLE, len(admitted)
    check_spend(fleet, tenant_id, answers, {"ok"})
    rows = fleet.ledger(tenant_id)
    assert all(r["cost_micros"] == COST for r in rows if r["status"] == "ok")
    assert all(r["reserved_micros"] == reserved_micros(CONTENT) for r in rows
               if r["status"] == "ok")  # fmt: skip


def test_concurrent_streams_never_overspend_the_budget(fleet: Fleet) -> None:
    tenant_id, key = fleet.tenant("spender-stream")
    answers = asyncio.run(send_all(fleet.urls, key, streamed(CONTENT, "metered", lambda i: None)))
    admitted = [a for a in answers if a.status == 200]
    assert FLOOR <= len(admitted) <= AFFORDABLE, len(admitted)
    check_spend(fleet, tenant_id, answers, {"ok"})
    rows = fleet.ledger(tenant_id)
    assert all(r["cost_micros"] == COST for r in rows if r["status"] == "ok")


def test_streams_cut_by_their_clients_never_overspend_nor_stay_reserved(fleet: Fleet) -> None:
    """A third of the streams are abandoned after their first chunk, another third
    half-way through a 50 tokens/s answer: each is charged once, within its reservation,
    and released."""
    tenant_id, key = fleet.tenant("spender-hangup")
    hang_up = streamed(CONTENT, "metered-slow", lambda i: (1, 20, None)[i % 3])
    answers = asyncio.run(send_all(fleet.urls, key, hang_up))
    admitted = [a for a in answers if a.status == 200]
    assert any(a.hung_up for a in admitted) and any(not a.hung_up for a in admitted)
    assert len(admitted) >= FLOOR, len(admitted)
    check_spend(fleet, tenant_id, answers, {"ok", "client_disconnected"})
    rows = {r["request_id"]: r for r in fleet.ledger(tenant_id)}
    for answer in admitted:
        row = rows[answer.request_id]
        assert 0 < row["cost_micros"] <= row["reserved_micros"], dict(row)
        if not answer.hung_up:
            assert (row["status"], row["cost_micros"]) == ("ok", COST), dict(row)
    cut = [rows[a.request_id] for a in admitted if a.hung_up]
    assert any(r["status"] == "client_disconnected" for r in cut), "no stream was cut"


async def leave_late(url: str, key: str) -> tuple[str, int]:
    """Stream LATE_CUT_CONTENT and hang up once the text seen is longer than
    ``max_tokens`` tokens would be at ~4 characters a token, well before the end of a
    50 tokens/s answer. Returns the request id and the characters seen."""
    seen = 0
    headers = {"authorization": f"Bearer {key}"}
    payload = body(LATE_CUT_CONTENT, "metered-slow", stream=True)
    async with (
        httpx.AsyncClient(timeout=30, headers=headers) as client,
        client.stream("POST", url + CHAT, json=payload) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or ():
                    seen += len((choice.get("delta") or {}).get("content") or "")
            if seen > 4 * MAX_TOKENS + 8:
                return resp.headers["x-request-id"], seen
    raise AssertionError(f"the answer ended after {seen} characters")


def test_a_stream_cut_late_is_charged_no_more_than_it_reserved(fleet: Fleet) -> None:
    """An upstream never produces more than max_tokens: whatever a cut stream is charged
    (an estimate from the text seen: its usage chunk never came), it is at most its
    reservation, so a budget that paid for the reservation is not overspent."""
    tenant_id, key = fleet.tenant("spender-late-cut", "one-reservation")
    request_id, seen = asyncio.run(leave_late(fleet.urls[0], key))
    rows = fleet.ledger_when(tenant_id, lambda rows: len(rows) >= 1)
    assert [r["request_id"] for r in rows] == [request_id]
    row = dict(rows[0])
    assert row["status"] == "client_disconnected", row
    assert fleet.reservations_when_empty(tenant_id) == 0
    budget = reserved_micros(LATE_CUT_CONTENT)
    assert row["completion_tokens"] <= MAX_TOKENS, (seen, row)
    assert row["cost_micros"] <= row["reserved_micros"] == budget, row
    assert fleet.budget_counter(tenant_id) <= budget, "the budget's counter passed its amount"
