"""``Idempotency-Key`` claims: a request that outlived its claim (past
``accounting.reservation_ttl``) leaves the key to the retry that claimed it since; it
neither overwrites the retry's answer nor frees its claim (budget/idempotency.py, the
stores' compare-and-set). The stores themselves are checked in test_store_contract."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from quotagate.auth.principal import Principal
from quotagate.budget.idempotency import Idempotency
from quotagate.errors import Conflict
from quotagate.limits.engine import LimitEngine
from quotagate.observability.metrics import IDEMPOTENCY_LOST
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.stage import Answered
from quotagate.store.memory import MemoryStore

TTL = 60.0  # reservation_ttl: how long a claim lasts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy() -> Any:
    accounting = SimpleNamespace(reservation_ttl=TTL, idempotency_ttl=3600.0)
    return SimpleNamespace(snapshot=SimpleNamespace(policy=SimpleNamespace(accounting=accounting)))


_RECORDS = iter(range(1_000_000))


def request(request_id: str) -> RequestContext:
    """A request with this X-Request-Id (a client's, which its retries may repeat) and
    the gateway's own record id (always new), as app.py sets them."""
    ctx = RequestContext({"type": "http", "headers": []}, None, None, None)
    ctx.request_id = request_id
    ctx.record_id = f"req_{next(_RECORDS)}"
    ctx.idempotency_key = b"order-17"
    ctx.principal = Principal("acme", "acme", "k1", "k1", "pro")
    ctx.model = "gpt-4"
    ctx.body = b'{"model": "gpt-4"}'
    return ctx


def answered(ctx: RequestContext, text: bytes) -> None:
    ctx.status = 200
    ctx.response_type = b"application/json"
    assert ctx.kept_body is not None, "the claim starts keeping the answer"
    ctx.kept_body.append(text)


async def replayed(stage: Idempotency, request_id: str) -> bytes:
    """What a retry with the same key is answered: the kept answer (the stage replays it
    and stops the request with Answered)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    retry = request(request_id)
    retry.send = send
    with pytest.raises(Answered):
        await stage(retry)
    body: bytes = sent[-1]["body"]
    return body


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stage(clock: Clock) -> Idempotency:
    return Idempotency(LimitEngine(MemoryStore(clock=clock)), policy())


async def test_a_request_that_outlived_its_claim_leaves_the_retrys_answer(
    stage: Idempotency, clock: Clock
) -> None:
    first = request("first")
    await stage(first)  # claims the key
    clock.now += TTL + 1  # the first is still running; its claim has lapsed
    retry = request("retry")
    await stage(retry)  # claims the key anew: served and charged
    answered(retry, b'{"answer": "retry"}')
    await stage.finish(retry)

    lost = IDEMPOTENCY_LOST._value.get()
    answered(first, b'{"answer": "first"}')
    await stage.finish(first)  # must not overwrite the retry's answer
    assert IDEMPOTENCY_LOST._value.get() == lost + 1

    assert await replayed(stage, "third") == b'{"answer": "retry"}'


async def test_a_failed_request_that_outlived_its_claim_does_not_free_the_retrys(
    stage: Idempotency, clock: Clock
) -> None:
    first = request("first")
    await stage(first)
    clock.now += TTL + 1
    await stage(request("retry"))  # in flight, holding the key
    first.status = 502
    await stage.finish(first)  # a failure frees only its own claim
    with pytest.raises(Conflict) as in_flight:
        await stage(request("another"))
    assert in_flight.value.status == 409


async def test_the_owner_keeps_its_answer_and_frees_its_claim_on_failure(
    stage: Idempotency,
) -> None:
    """The claim's owner is not mistaken for a stranger: its answer is kept, and a
    failure frees the key for a retry."""
    ok = request("ok")
    await stage(ok)
    answered(ok, b'{"answer": "ok"}')
    lost = IDEMPOTENCY_LOST._value.get()
    await stage.finish(ok)
    assert await replayed(stage, "third") == b'{"answer": "ok"}'

    failed = request("failed")
    failed.idempotency_key = b"order-18"
    await stage(failed)
    failed.status = 500
    await stage.finish(failed)
    retry = request("retry")
    retry.idempotency_key = b"order-18"
    await stage(retry)  # claimed, not 409
    assert retry.idempotency_store is not None
    assert IDEMPOTENCY_LOST._value.get() == lost


async def test_a_retry_that_repeats_the_clients_request_id_is_still_another_owner(
    stage: Idempotency, clock: Clock
) -> None:
    """Clients may resend their X-Request-Id on a retry; the claim names the gateway's
    own id, so the stale first request still cannot free the retry's claim."""
    first = request("client-id-1")
    await stage(first)
    clock.now += TTL + 1
    await stage(request("client-id-1"))  # the retry, same X-Request-Id, in flight
    first.status = 502
    await stage.finish(first)
    with pytest.raises(Conflict):
        await stage(request("client-id-2"))


async def test_a_claim_that_lapsed_with_no_retry_still_keeps_its_answer(
    stage: Idempotency, clock: Clock
) -> None:
    """Nobody else took the key: the slow first request's answer is kept for replays,
    and nothing is counted as lost."""
    first = request("slow")
    await stage(first)
    clock.now += TTL + 1
    answered(first, b'{"answer": "slow"}')
    lost = IDEMPOTENCY_LOST._value.get()
    await stage.finish(first)
    assert IDEMPOTENCY_LOST._value.get() == lost
    assert await replayed(stage, "retry") == b'{"answer": "slow"}'
