"""The ledger writer: one test body on SQLite and on the local PostgreSQL server.

Outages are real: the ledger table is renamed away (every insert fails as it would
against a broken database), or locked by another connection so inserts hang.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from quotagate.budget.ledger import COLUMNS, SPOOL_GLOB, LedgerRecord, LedgerWriter
from quotagate.db.repo import Database
from quotagate.db.schema import ledger

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def record(request_id: str, **fields: Any) -> LedgerRecord:
    values: dict[str, Any] = {
        "created_at": datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC),
        "tenant_id": "t1",
        "key_id": "k1",
        "model": "gpt-4o-mini",
        "endpoint": "chat",
        "status": "ok",
        "http_status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "cost_micros": 1_234,
    }
    return LedgerRecord(request_id=request_id, **(values | fields))


def records(prefix: str, n: int) -> list[LedgerRecord]:
    return [record(f"{prefix}-{i:05d}") for i in range(n)]


async def stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.scalars(select(ledger.c.request_id))).all())


def spooled_ids(spool: Path, pattern: str = SPOOL_GLOB) -> list[str]:
    lines = [line for f in spool.glob(pattern) for line in f.read_bytes().splitlines()]
    return [LedgerRecord.from_json(line).request_id for line in lines]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not met within {timeout}s"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def table_renamed_away(engine: AsyncEngine) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE qg_ledger RENAME TO qg_ledger_away"))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE qg_ledger_away RENAME TO qg_ledger"))


@contextmanager
def count_inserts(engine: AsyncEngine) -> Iterator[list[int]]:
    """The number of rows of each INSERT INTO qg_ledger the engine sends: parameter sets
    of an executemany, or the rows of one multi-row statement."""
    sent: list[int] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO qg_ledger"):
            sent.append(len(params) if many else len(params) // len(COLUMNS))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


def metric(outcome: str) -> float:
    value = REGISTRY.get_sample_value("quotagate_ledger_records_total", {"outcome": outcome})
    return value or 0.0


def test_record_is_a_ledger_row_and_survives_the_spool_format() -> None:
    assert sorted(ledger.c.keys()) == sorted(COLUMNS)
    paris = timezone(timedelta(hours=1))
    rec = record("r1", created_at=datetime(2026, 3, 1, 13, 0, tzinfo=paris), ttfb_ms=3.5)
    row = rec.as_row()
    assert row["created_at"] == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert row["created_at"].tzinfo is UTC
    back = LedgerRecord.from_json(rec.to_json())
    assert back.as_row() == row and back.created_at.tzinfo is not None


async def test_full_batches_are_written_at_once_and_the_rest_on_close(
    db: Database, spool: Path
) -> None:
    written_before = metric("written")
    writer = LedgerWriter(db.engine, spool, batch_size=10, flush_interval=60)
    await writer.start()
    with count_inserts(db.engine) as sent:
        for rec in records("b", 25):
            writer.submit(rec)
        await eventually(lambda: writer.stats.written == 20)  # size-triggered, not the 60 s
        assert sent == [10, 10] and writer.stats.queued == 5
        await writer.close()
        assert sent == [10, 10, 5]
    assert sorted(await stored_ids(db.engine)) == [r.request_id for r in records("b", 25)]
    assert metric("written") - written_before == 25
    assert list(spool.iterdir()) == []


async def test_a_partial_batch_is_written_after_the_flush_interval(
    db: Database, spool: Path
) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=500, flush_interval=0.05)
    await writer.start()
    for rec in records("f", 3):
        writer.submit(rec)
    await eventually(lambda: writer.stats.written == 3)
    assert len(await stored_ids(db.engine)) == 3
    await writer.close()


async def test_the_same_request_id_is_stored_once(db: Database, spool: Path) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=2, flush_interval=0.02)
    await writer.start()
    writer.submit(record("dup", prompt_tokens=1))
    writer.submit(record("dup", prompt_tokens=2))  # same batch
    await eventually(lambda: writer.stats.written == 2)
    writer.submit(record("dup", prompt_tokens=3))  # a later batch
    await writer.close()
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(ledger.c.request_id, ledger.c.prompt_tokens))).all()
    assert [tuple(r) for r in rows] == [("dup", 1)]
    if db.engine.dialect.name == "sqlite":  # asyncpg's executemany reports no row count
        assert writer.stats.duplicates == 2


async def test_a_batch_past_sqlites_parameter_limit_goes_in_several_statements(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a batch goes in statements of as many rows as the build's parameter
    limit allows, the odd rows after them one by one; duplicates among them are
    stored once and counted."""
    monkeypatch.setattr("quotagate.budget.ledger._sqlite_parameter_limit", lambda: 3 * 19 + 5)
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/chunks.db")
    await database.create_schema()
    try:
        writer = LedgerWriter(database.engine, spool, batch_size=10, flush_interval=60)
        await writer.start()
        batch = [*records("c", 8), record("c-00001"), record("c-00007")]
        with count_inserts(database.engine) as sent:
            for rec in batch:
                writer.submit(rec)
            await writer.close()
        assert sent == [3, 3, 3, 1]
        assert sorted(await stored_ids(database.engine)) == [r.request_id for r in batch[:8]]
        assert (writer.stats.written, writer.stats.duplicates) == (10, 2)
    finally:
        await database.close()


async def test_close_writes_everything_queued(db: Database, spool: Path) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=500, flush_interval=60)
    await writer.start()
    for rec in records("c", 1_234):
        writer.submit(rec)
    await writer.close()
    assert len(set(await stored_ids(db.engine))) == 1_234
    assert writer.stats.written == 1_234 and writer.stats.spooled == 0


async def test_an_outage_is_spooled_then_replayed_once(
    db: Database, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quotagate.ledger")
    writer = LedgerWriter(db.engine, spool, batch_size=50, flush_interval=0.02, retry_interval=0.05)
    await writer.start()
    before, during, after = records("o1", 60), records("o2", 120), records("o3", 30)
    for rec in before:
        writer.submit(rec)
    await eventually(lambda: writer.stats.written == 60)
    async with table_renamed_away(db.engine):
        for rec in during:
            writer.submit(rec)
        await eventually(lambda: writer.stats.spooled == 120)
        await eventually(lambda: sorted(spooled_ids(spool)) == [r.request_id for r in during])
    await eventually(lambda: writer.stats.replayed == 120)
    for rec in after:
        writer.submit(rec)
    await writer.close()

    ids = await stored_ids(db.engine)
    assert sorted(ids) == sorted(r.request_id for r in before + during + after)
    assert list(spool.glob(SPOOL_GLOB)) == []
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    warnings = [m for level, m in messages if level == "WARNING"]
    assert len(warnings) == 1 and "database unavailable" in warnings[0]
    assert [m for level, m in messages if level == "INFO"] == [
        "ledger: database available; 120 spooled records replayed"
    ]
    assert "gpt-4o-mini" not in caplog.text  # no record contents in the log


async def test_past_max_queue_records_are_spooled_not_dropped(db: Database, spool: Path) -> None:
    writer = LedgerWriter(
        db.engine, spool, batch_size=1_000, flush_interval=0.02, max_queue=10,
        retry_interval=0.05,
    )  # fmt: skip
    await writer.start()
    for rec in records("q", 25):
        writer.submit(rec)
    assert (writer.stats.queued, writer.stats.spooled) == (10, 15)
    await eventually(lambda: (writer.stats.written, writer.stats.replayed) == (10, 15))
    await writer.close()
    assert sorted(await stored_ids(db.engine)) == [r.request_id for r in records("q", 25)]


async def test_submitted_records_are_in_the_db_or_the_spool_after_close(
    db: Database, spool: Path
) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=5, flush_interval=0.02, max_queue=10)
    for rec in records("s", 25):  # never started: 10 queued, 15 spooled
        writer.submit(rec)
    await writer.close()
    writer.submit(record("s-late"))  # after close: spooled
    stored, spooled = await stored_ids(db.engine), spooled_ids(spool)
    assert sorted(stored + spooled) == sorted([r.request_id for r in records("s", 25)] + ["s-late"])
    assert len(stored) == 10


CRASHING_GATEWAY = """
import asyncio, os, sys
from datetime import UTC, datetime
from pathlib import Path
from sqlalchemy.ext.asyncio import create_async_engine
from quotagate.budget.ledger import LedgerRecord, LedgerWriter

async def main(db: str, spool: Path, n: int) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")  # no ledger table: failing
    writer = LedgerWriter(engine, spool, batch_size=7, flush_interval=0.01)
    await writer.start()
    for i in range(n):
        writer.submit(LedgerRecord(request_id=f"crash-{i:05d}", created_at=datetime.now(UTC),
                                   endpoint="chat", status="ok", http_status=200))
    while sum(len(f.read_bytes().splitlines()) for f in spool.glob("ledger-*.jsonl")) < n:
        await asyncio.sleep(0.01)
    os._exit(0)  # no close(): a crash

asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
"""


async def test_a_spool_left_by_a_crashed_process_is_replayed_on_start(
    db: Database, spool: Path, tmp_path: Path
) -> None:
    args = [sys.executable, "-c", CRASHING_GATEWAY, str(tmp_path / "empty.db"), str(spool), "40"]
    subprocess.run(args, check=True, timeout=60)
    left = list(spool.glob(SPOOL_GLOB))
    assert left and len(spooled_ids(spool)) == 40
    with left[-1].open("ab") as torn:
        torn.write(b'{"request_id": "crash-torn", "created_')  # cut short by the crash

    writer = LedgerWriter(db.engine, spool, flush_interval=0.02)
    await writer.start()
    await eventually(lambda: writer.stats.replayed == 40)
    await writer.close()
    assert sorted(await stored_ids(db.engine)) == [f"crash-{i:05d}" for i in range(40)]
    assert list(spool.glob(SPOOL_GLOB)) == []


async def test_a_spool_file_of_torn_lines_only_is_dropped_not_an_outage(
    db: Database, spool: Path
) -> None:
    """A crash in the middle of a spool file's first record leaves nothing readable:
    the file is skipped with a warning and removed, and the database is not taken to
    be down (a batch of no rows sent to it failed, and its every batch was spooled)."""
    spool.mkdir()
    torn = spool / "ledger-1-111-000001.jsonl"
    torn.write_bytes(b'{"request_id": "crash-torn", "created_')
    writer = LedgerWriter(db.engine, spool, flush_interval=0.02, retry_interval=0.05)
    await writer.start()
    await eventually(lambda: not torn.exists())
    writer.submit(record("after"))
    await eventually(lambda: writer.stats.written == 1)
    down = writer._down
    await writer.close()
    assert await stored_ids(db.engine) == ["after"]
    assert writer.stats.spooled == 0 and not down


HOLD_LOCK = """
import fcntl, sys
with open(sys.argv[1], "rb") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
"""


async def test_a_spool_file_locked_by_another_process_is_skipped(db: Database, spool: Path) -> None:
    spool.mkdir()
    locked, free = spool / "ledger-1-111-000001.jsonl", spool / "ledger-2-222-000001.jsonl"
    locked.write_bytes(b"".join(r.to_json() + b"\n" for r in records("held", 5)))
    free.write_bytes(b"".join(r.to_json() + b"\n" for r in records("free", 5)))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(locked)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        writer = LedgerWriter(db.engine, spool, flush_interval=0.02, retry_interval=0.05)
        await writer.start()
        await eventually(lambda: not free.exists())  # a replay pass went past the locked one
        assert locked.exists() and writer.stats.replayed == 5
        assert sorted(await stored_ids(db.engine)) == [r.request_id for r in records("free", 5)]
    finally:
        holder.communicate(timeout=10)  # closes its stdin: it lets go of the lock
    await eventually(lambda: not locked.exists())  # released: the next pass replays it
    await writer.close()
    assert len(await stored_ids(db.engine)) == 10


@pytest.mark.parametrize(
    "fault",
    [
        {"endpoint": None},  # NOT NULL: the database refuses it
        # Past the column's range (int32 on PostgreSQL, int64 on SQLite): the driver
        # refuses it before the database sees it (sqlite3's OverflowError, asyncpg's
        # DataError). It used to set aside its whole batch on SQLite and, on PostgreSQL,
        # to be taken for an outage that every replay met again.
        {"reserved_tokens": 10**19},
    ],
    ids=["not-null", "out-of-range"],
)
async def test_a_row_the_database_refuses_is_set_aside_not_retried_forever(
    db: Database, spool: Path, caplog: pytest.LogCaptureFixture, fault: dict[str, Any]
) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=10, flush_interval=0.02)
    await writer.start()
    good = records("g", 9)
    for rec in good[:5]:
        writer.submit(rec)
    writer.submit(record("bad", model="secret-model", **fault))
    for rec in good[5:]:
        writer.submit(rec)
    await eventually(lambda: writer.stats.written == 9 and writer.stats.rejected == 1)
    writer.submit(record("after"))
    await eventually(lambda: writer.stats.written == 10)
    down = writer._down  # not in outage mode: nothing spooled, the next write went in
    await writer.close()
    assert sorted(await stored_ids(db.engine)) == sorted([r.request_id for r in good] + ["after"])
    assert spooled_ids(spool, "rejected-*.jsonl") == ["bad"]
    assert writer.stats.spooled == 0 and not down
    assert not list(spool.glob(SPOOL_GLOB))
    assert "bad" in caplog.text and "secret-model" not in caplog.text


@contextmanager
def sqlite_locked(path: str) -> Iterator[None]:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@asynccontextmanager
async def table_locked(db: Database) -> AsyncIterator[None]:
    """Inserts into the ledger wait: another connection holds the table (or file) lock."""
    if db.engine.dialect.name == "sqlite":
        with sqlite_locked(str(db.engine.url.database)):
            yield
        return
    async with db.engine.connect() as conn:
        await conn.execute(text("BEGIN"))
        await conn.execute(text("LOCK TABLE qg_ledger IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            await conn.rollback()


async def test_an_open_read_does_not_hold_back_the_writes_on_sqlite(
    tmp_path: Path, spool: Path
) -> None:
    """A long report (``quotagate usage`` on a big ledger) reads while the gateway
    writes. On SQLite that needs write-ahead logging: under a rollback journal the
    commit waits for the reader's lock until the write times out and is spooled.
    (PostgreSQL readers never block writers.)"""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/qg.db")
    await db.create_schema()
    reader = sqlite3.connect(str(db.engine.url.database), isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM qg_ledger").fetchone() == (0,)
        writer = LedgerWriter(db.engine, spool, batch_size=10, flush_interval=0.02, write_timeout=2)
        await writer.start()
        for rec in records("w", 25):
            writer.submit(rec)
        await eventually(lambda: writer.stats.written == 25, timeout=1.5)
        # The reader's snapshot is its own: it still sees the table as it began.
        assert reader.execute("SELECT count(*) FROM qg_ledger").fetchone() == (0,)
        reader.execute("COMMIT")
        await writer.close()
    finally:
        reader.close()
    assert writer.stats.spooled == 0 and list(spool.glob(SPOOL_GLOB)) == []
    assert sorted(await stored_ids(db.engine)) == [r.request_id for r in records("w", 25)]
    await db.close()


async def test_what_close_cannot_write_in_time_is_spooled(db: Database, spool: Path) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=10, flush_interval=0.02, write_timeout=30)
    await writer.start()
    async with table_locked(db):
        for rec in records("h", 35):
            writer.submit(rec)
        started = time.monotonic()
        await writer.close(timeout=0.5)
        assert time.monotonic() - started < 5
        assert sorted(set(spooled_ids(spool))) == [r.request_id for r in records("h", 35)]
    replayer = LedgerWriter(db.engine, spool, flush_interval=0.02)
    await replayer.start()
    await eventually(lambda: not list(spool.glob(SPOOL_GLOB)))
    await replayer.close()
    assert sorted(await stored_ids(db.engine)) == [r.request_id for r in records("h", 35)]


async def test_a_record_that_breaks_the_writer_is_set_aside_and_writing_goes_on(
    db: Database, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LedgerWriter(db.engine, spool, batch_size=10, flush_interval=0.02)
    await writer.start()
    writer.submit(record("broken", created_at="yesterday"))  # a caller's bug
    await eventually(lambda: writer.stats.rejected == 1)
    writer.submit(record("next"))
    await writer.close()
    assert await stored_ids(db.engine) == ["next"]
    [line] = next(spool.glob("rejected-*.jsonl")).read_bytes().splitlines()
    assert orjson.loads(line)["request_id"] == "broken"
    assert "unexpected error" in caplog.text
