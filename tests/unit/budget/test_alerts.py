"""Alert webhooks against a real aiohttp receiver on 127.0.0.1 and a real SQLite database."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from sqlalchemy import select

from quotagate.budget.alerts import Alert, AlertSender, sign, verify
from quotagate.db.repo import Database
from quotagate.db.schema import alert_deliveries

SECRET = b"whsec-test-3f9a1c"
NOW = 1_700_000_000.0

MakeSender = Callable[..., AlertSender]


def make_alert(unit: str = "micros", alert_id: str = "al_1") -> Alert:
    return Alert(
        alert_id=alert_id,
        tenant_id="t1",
        tenant_name="acme",
        quota="budget",
        unit=unit,  # type: ignore[arg-type]
        threshold=0.8,
        limit=500_000_000,
        used=400_000_001,
        period_start=datetime(2024, 5, 1, tzinfo=UTC),
        resets_at=datetime(2024, 6, 1, tzinfo=UTC),
        currency="USD" if unit == "micros" else None,
    )


@dataclass
class Received:
    at: float
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Receiver:
    """Answers with ``replies`` in order, then 200; ``hold`` keeps a request waiting."""

    url: str = ""
    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        at = asyncio.get_running_loop().time()
        self.received.append(Received(at, CIMultiDict(request.headers), await request.read()))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        status, headers = self.replies.pop(0) if self.replies else (200, {})
        return web.Response(status=status, headers=headers)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    if rec.hold is not None:
        rec.hold.set()
    await runner.cleanup()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
async def make_sender(db: Database, receiver: Receiver) -> AsyncIterator[MakeSender]:
    senders: list[AlertSender] = []
    async with aiohttp.ClientSession() as session:

        def make(**kwargs: Any) -> AlertSender:
            options: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 2.0}
            options.update(kwargs)
            url = options.pop("url", receiver.url)
            engine = options.pop("engine", db.engine)
            sender = AlertSender(session, engine, url, options.pop("secret", SECRET), **options)
            senders.append(sender)
            return sender

        yield make
        for sender in senders:
            await sender.close(timeout=0.1)


async def rows(db: Database) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(alert_deliveries).order_by(alert_deliveries.c.id))
        found = [dict(r._mapping) for r in result]
    assert not any(SECRET.decode() in repr(row) for row in found)
    return found


def test_payload_has_money_strings_for_micros() -> None:
    payload = orjson.loads(make_alert("micros").to_json())
    assert payload["type"] == "quota.threshold"
    assert payload["id"] == "al_1"
    assert payload["tenant"] == {"id": "t1", "name": "acme"}
    assert payload["threshold"] == 0.8
    assert payload["remaining"] == 99_999_999
    assert payload["amounts_in"] == "micros"
    assert payload["limit_amount"] == "500.000000"
    assert payload["used_amount"] == "400.000001"
    assert payload["period_start"] == "2024-05-01T00:00:00+00:00"
    assert payload["resets_at"] == "2024-06-01T00:00:00+00:00"


def test_payload_for_tokens_has_no_money() -> None:
    payload = orjson.loads(make_alert("tokens").to_json())
    assert payload["amounts_in"] == "tokens"
    assert payload["currency"] is None
    assert "limit_amount" not in payload and "used_amount" not in payload


def test_sign_and_verify() -> None:
    body = b'{"a":1}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    header = sign(SECRET, int(NOW), body)
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, body, now=NOW + 299)
    assert not verify(SECRET, header, body + b" ", now=NOW)
    assert not verify(b"other", header, body, now=NOW)
    assert not verify(SECRET, header, body, now=NOW + 301)
    assert not verify(SECRET, header, body, now=NOW - 301)  # from the future
    assert verify(SECRET, f"{header},v1=00", body, now=NOW)  # a second, rotated signature
    for garbage in ("", "t=x,v1=ab", f"v1={expected}", "t=1700000000,v1=é"):
        assert not verify(SECRET, garbage, body, now=NOW)


async def test_delivered_alert_is_signed(
    make_sender: MakeSender, receiver: Receiver, db: Database
) -> None:
    sender = make_sender(clock=lambda: NOW)
    alert = make_alert()
    sender.send(alert)
    await sender.close()

    [got] = receiver.received
    assert got.body == alert.to_json()
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "quotagate-alerts"
    assert got.headers["X-Quotagate-Alert-Id"] == "al_1"
    signature = got.headers["X-Quotagate-Signature"]
    assert signature.startswith("t=1700000000,")
    assert verify(SECRET, signature, got.body, now=NOW + 10)
    assert not verify(SECRET, signature, got.body.replace(b"acme", b"acmf"), now=NOW)
    assert not verify(b"wrong-secret", signature, got.body, now=NOW)
    assert not verify(SECRET, signature, got.body, now=NOW + 3600)

    [row] = await rows(db)
    assert row["alert_id"] == "al_1" and row["tenant_id"] == "t1" and row["quota"] == "budget"
    assert (row["attempt"], row["status_code"], row["error"], row["delivered"]) == (
        1,
        200,
        None,
        True,
    )
    assert row["url"] == receiver.url
    assert (sender.delivered, sender.failed, sender.attempts) == (1, 0, 1)


async def test_5xx_is_retried_until_delivered(
    make_sender: MakeSender, receiver: Receiver, db: Database
) -> None:
    receiver.replies = [(500, {}), (500, {})]
    sender = make_sender()
    sender.send(make_alert())
    await sender.close()

    found = await rows(db)
    assert [(r["attempt"], r["status_code"], r["delivered"]) for r in found] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    assert {r.headers["X-Quotagate-Alert-Id"] for r in receiver.received} == {"al_1"}
    assert (sender.delivered, sender.failed, sender.attempts) == (1, 0, 3)


@pytest.mark.parametrize("status", [408, 429, 502, 503])
async def test_other_transient_statuses_are_retried(
    make_sender: MakeSender, receiver: Receiver, db: Database, status: int
) -> None:
    receiver.replies = [(status, {})]
    sender = make_sender()
    sender.send(make_alert())
    await sender.close()
    assert [r["status_code"] for r in await rows(db)] == [status, 200]
    assert sender.delivered == 1


async def test_retry_after_is_honoured(
    make_sender: MakeSender, receiver: Receiver, db: Database
) -> None:
    receiver.replies = [(429, {"Retry-After": "1"})]
    sender = make_sender(max_backoff=5.0)
    sender.send(make_alert())
    await sender.close()
    first, second = receiver.received
    assert second.at - first.at >= 0.9  # the jittered backoff alone is at most 0.01 s
    assert [r["status_code"] for r in await rows(db)] == [429, 200]


async def test_retry_after_is_capped_by_max_backoff(
    make_sender: MakeSender, receiver: Receiver
) -> None:
    receiver.replies = [(503, {"Retry-After": "3600"})]
    sender = make_sender(max_backoff=0.05)
    sender.send(make_alert())
    await sender.close(timeout=5.0)
    assert sender.delivered == 1


@pytest.mark.parametrize(
    ("status", "headers"), [(400, {}), (404, {}), (302, {"Location": "/elsewhere"})]
)
async def test_client_errors_and_redirects_give_up_at_once(
    make_sender: MakeSender,
    receiver: Receiver,
    db: Database,
    caplog: pytest.LogCaptureFixture,
    status: int,
    headers: dict[str, str],
) -> None:
    receiver.replies = [(status, headers)]
    sender = make_sender()
    with caplog.at_level(logging.WARNING, logger="quotagate.alerts"):
        sender.send(make_alert())
        await sender.close()
    assert len(receiver.received) == 1
    [row] = await rows(db)
    assert (row["attempt"], row["status_code"], row["delivered"]) == (1, status, False)
    assert (sender.delivered, sender.failed, sender.attempts) == (0, 1, 1)
    assert "gave up on alert al_1" in caplog.text
    assert SECRET.decode() not in caplog.text


async def test_connection_refused_gives_up_after_max_attempts(
    make_sender: MakeSender, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    sender = make_sender(url=f"http://127.0.0.1:{closed_port()}/hook", max_attempts=3)
    with caplog.at_level(logging.WARNING, logger="quotagate.alerts"):
        sender.send(make_alert())
        await sender.close()
    found = await rows(db)
    assert [r["attempt"] for r in found] == [1, 2, 3]
    assert all(r["status_code"] is None and not r["delivered"] for r in found)
    assert all(r["error"] and len(r["error"]) <= 500 for r in found)
    assert (sender.delivered, sender.failed, sender.attempts) == (0, 1, 3)
    assert "after 3 attempts" in caplog.text
    assert SECRET.decode() not in caplog.text


async def test_timeouts_are_retried(
    make_sender: MakeSender, receiver: Receiver, db: Database
) -> None:
    receiver.hold = asyncio.Event()
    sender = make_sender(timeout=0.1, max_attempts=2)
    sender.send(make_alert())
    await sender.close()
    found = await rows(db)
    assert [(r["status_code"], r["error"]) for r in found] == [(None, "TimeoutError")] * 2
    assert sender.failed == 1


async def test_close_waits_for_an_in_flight_delivery(
    make_sender: MakeSender, receiver: Receiver, db: Database
) -> None:
    receiver.hold = asyncio.Event()
    sender = make_sender()
    sender.send(make_alert())
    await receiver.arrived.wait()
    closing = asyncio.create_task(sender.close(timeout=5.0))
    done, _ = await asyncio.wait({closing}, timeout=0.05)
    assert not done
    receiver.hold.set()
    await closing
    assert sender.delivered == 1
    assert [r["delivered"] for r in await rows(db)] == [True]
    with pytest.raises(RuntimeError):
        sender.send(make_alert("tokens", "al_2"))


async def test_close_abandons_deliveries_after_its_timeout(
    make_sender: MakeSender, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hold = asyncio.Event()
    sender = make_sender()
    sender.send(make_alert())
    await receiver.arrived.wait()
    with caplog.at_level(logging.WARNING, logger="quotagate.alerts"):
        await sender.close(timeout=0.05)
    assert "abandoned 1 alert deliveries" in caplog.text
    assert (sender.delivered, sender.failed) == (0, 0)


async def test_a_recording_failure_does_not_stop_delivery(
    make_sender: MakeSender, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = Database(f"sqlite+aiosqlite:///{tmp_path}/no-tables.db")
    receiver.replies = [(500, {})]
    sender = make_sender(engine=empty.engine)
    with caplog.at_level(logging.WARNING, logger="quotagate.alerts"):
        sender.send(make_alert())
        await sender.close()
    await empty.close()
    assert len(receiver.received) == 2
    assert sender.delivered == 1
    assert "could not record attempt 1 of alert al_1" in caplog.text


async def test_the_secret_is_never_recorded(make_sender: MakeSender, db: Database) -> None:
    secret = SECRET.decode()
    urls = {
        "al_userinfo": f"http://hook:{secret}@127.0.0.1:{closed_port()}/hook",
        "al_host": f"http://{secret}.invalid/hook",  # the resolver's error repeats the host
    }
    senders = [make_sender(url=url, max_attempts=1) for url in urls.values()]
    for sender, alert_id in zip(senders, urls, strict=True):
        sender.send(make_alert(alert_id=alert_id))
    await asyncio.gather(*(sender.close() for sender in senders))
    found = await rows(db)  # asserts the secret is in no row
    assert {r["alert_id"] for r in found} == set(urls)
    assert all(r["error"] and not r["delivered"] for r in found)
