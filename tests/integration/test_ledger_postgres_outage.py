"""The ledger through a real PostgreSQL outage.

A private server is stopped while records stream into the writer and started again;
afterwards every submitted request id is in the table exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pg_servers import PostgresServer, have_postgres, start_postgres
from quotagate.budget.ledger import SPOOL_GLOB, LedgerRecord, LedgerWriter
from quotagate.db.repo import Database
from quotagate.db.schema import ledger

pytestmark = pytest.mark.skipif(not have_postgres(), reason="initdb/pg_ctl not installed")

CHUNK = 20  # records per submit burst; a burst every 5 ms is ~4,000 records/s


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path)
    yield server
    server.remove()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.01)


class Stream:
    """Submits records in bursts until stopped, remembering every request id."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer, self.submitted = writer, list[str]()
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        while not self.stopped.is_set():
            for _ in range(CHUNK):
                request_id = f"req-{len(self.submitted):07d}"
                self.writer.submit(
                    LedgerRecord(request_id=request_id, created_at=datetime.now(UTC),
                                 tenant_id="t1", endpoint="chat", status="ok", http_status=200,
                                 prompt_tokens=10, completion_tokens=5, cost_micros=42)
                )  # fmt: skip
                self.submitted.append(request_id)
            await asyncio.sleep(0.005)  # pacing, not waiting for anything


async def test_no_record_is_lost_or_doubled_when_postgres_restarts(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    db = Database(postgres.url)
    await db.create_schema()
    spool = tmp_path / "spool"
    writer = LedgerWriter(
        db.engine, spool, batch_size=100, flush_interval=0.02, retry_interval=0.1,
        write_timeout=2.0,
    )  # fmt: skip
    await writer.start()
    stream = Stream(writer)
    producer = asyncio.create_task(stream.run())
    try:
        await eventually(lambda: writer.stats.written >= 1_000, "writing before the outage")
        await asyncio.to_thread(postgres.stop)
        await eventually(lambda: writer.stats.spooled >= 2_000, "spooling during the outage")
        await asyncio.to_thread(postgres.start)
        await eventually(
            lambda: writer.stats.replayed >= writer.stats.spooled, "replay after the outage"
        )
        resumed = writer.stats.written
        await eventually(lambda: writer.stats.written >= resumed + 1_000, "writing after it")
    finally:
        stream.stopped.set()
        await producer
        await writer.close()

    async with db.engine.connect() as conn:
        rows = await conn.execute(select(func.count(), func.count(ledger.c.request_id.distinct())))
        total, distinct = rows.one()
        stored = set((await conn.scalars(select(ledger.c.request_id))).all())
    await db.close()
    assert stored == set(stream.submitted)
    assert total == distinct == len(stream.submitted)
    assert writer.stats.spooled >= 2_000 and list(spool.glob(SPOOL_GLOB)) == []
