"""The ledger writer and a record whose integer does not fit its column.

A reservation (budget/reserve.py: prompt + max_tokens x n) goes into every ledger row
of a metered request, even one refused as too large; parse now caps max_tokens, but a
record can also come from a spool file or a reaped reservation. A value past the
column's range (Integer: int32 on PostgreSQL; int64 on SQLite) must cost that one row
only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from quotagate.budget.ledger import SPOOL_GLOB, LedgerRecord, LedgerWriter
from quotagate.db.repo import Database
from quotagate.db.schema import ledger

HUGE = 10**19  # past int64 and int32


def rec(request_id: str, **fields: object) -> LedgerRecord:
    values: dict[str, object] = {
        "created_at": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        "tenant_id": "t1",
        "key_id": "k1",
        "endpoint": "chat.completions",
        "status": "denied",
        "http_status": 429,
    }
    return LedgerRecord(request_id=request_id, **(values | fields))  # type: ignore[arg-type]


async def stored(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        return sorted((await conn.scalars(select(ledger.c.request_id))).all())


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_one_out_of_range_record_costs_only_its_own_row(db: Database, tmp_path: Path) -> None:
    """One bad record cannot hold the ledger in outage mode (ledger.py): the
    out-of-range row is set aside alone; the other rows of its batch and every later
    row are written, nothing stays spooled, the writer is not 'down'. (Before: on SQLite
    the OverflowError set the whole batch aside; on PostgreSQL it was taken for an
    outage, and every replay failed again on the same row.)"""
    spool = tmp_path / "spool"
    writer = LedgerWriter(db.engine, spool, batch_size=11, flush_interval=0.02,
                          retry_interval=0.05, write_timeout=2)  # fmt: skip
    await writer.start()
    innocent = [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    for rid in innocent[:5]:
        writer.submit(rec(rid))
    writer.submit(rec("huge", reserved_tokens=HUGE))
    for rid in innocent[5:]:
        writer.submit(rec(rid))
    await eventually(lambda: writer.stats.written + writer.stats.rejected >= 11)
    writer.submit(rec("later"))
    await eventually(lambda: writer.stats.queued == 0 and not list(spool.glob(SPOOL_GLOB)))
    down = writer._down
    await writer.close(timeout=3)
    spooled = list(spool.glob(SPOOL_GLOB))
    assert set(innocent) | {"later"} <= set(await stored(db))
    assert not down and spooled == []
