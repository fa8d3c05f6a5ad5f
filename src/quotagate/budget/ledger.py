"""The usage ledger: one row per request, written in batches, never lost.

``submit`` (the request path) only appends to a queue. One background task inserts the
queue in batches with ``INSERT … ON CONFLICT (request_id) DO NOTHING``, so writing a
record twice stores it once. When the database fails, batches go to spool files (JSON
lines, fsync'ed) in ``spool_dir`` until it answers again; then every spool file there
(this process's, and any left by a process that died) is replayed and deleted.

Gateway workers may share ``spool_dir``. A spool file is held under ``flock`` by the
process writing it and by the one replaying it, and the others skip it, so no file is
replayed by two processes at once.

Rows the database refuses for what they contain (a NOT NULL or length violation),
rather than because it is down, are set aside in ``rejected-<pid>.jsonl`` (never
replayed) and logged by request id, so one bad record cannot hold the ledger in outage
mode; so is a batch that makes the writer itself fail (a bug).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import sqlite3
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, get_args

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from quotagate.db.schema import ledger
from quotagate.observability.metrics import LEDGER_QUEUE_DEPTH, LEDGER_RECORDS

logger = logging.getLogger("quotagate.ledger")

Outcome = Literal["written", "spooled", "replayed", "rejected"]
SPOOL_GLOB = "ledger-*.jsonl"
# The database did not answer (or answered too late): spool and retry later.
_UNAVAILABLE = (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Raised by the driver itself for a value it cannot send (an integer past the column's
# range: sqlite3's OverflowError, asyncpg's DataError, a ValueError): that row's fault.
_DRIVER_REFUSALS = (OverflowError, ValueError)


class LedgerRecord(NamedTuple):
    """One ``qg_ledger`` row; ``created_at`` is UTC. A NamedTuple: it is its own
    PostgreSQL row, one allocation per request (the slotted dataclass it was, and the
    tuple made from it per row, took 4.4 µs against 2.3 µs, timed alone)."""

    request_id: str
    created_at: datetime
    endpoint: str
    status: str
    http_status: int
    tenant_id: str | None = None
    key_id: str | None = None
    user_id: str | None = None
    model: str | None = None
    deployment: str | None = None
    denial_reason: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    reserved_tokens: int = 0
    reserved_micros: int = 0
    duration_ms: float = 0.0
    ttfb_ms: float | None = None

    def as_row(self) -> dict[str, Any]:
        row = self._asdict()
        row["created_at"] = _utc(self.created_at)
        return row

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_row())

    @classmethod
    def from_json(cls, line: bytes | str) -> LedgerRecord:
        row = orjson.loads(line)
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        return cls(**row)


COLUMNS = LedgerRecord._fields  # the insert names them: the table's order is its own


@dataclass(slots=True)
class LedgerStats:
    written: int = 0  # from the queue
    spooled: int = 0
    replayed: int = 0  # from spool files, duplicates included
    rejected: int = 0
    duplicates: int = 0  # ignored by ON CONFLICT; counted where the driver reports rows
    queued: int = 0


class LedgerWriter:
    """Batched, idempotent ledger writes that spool to disk while the database is down.

    ``submit`` is for the request path; ``start`` and ``close`` bracket the process.
    After ``close``, every submitted record is in the table or in a spool file.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_queue: int = 200_000,
        retry_interval: float = 1.0,
        write_timeout: float = 5.0,
    ) -> None:
        self._engine, self._spool_dir = engine, spool_dir
        self._insert = _insert_statement(engine.dialect.name, batch_size)
        self._batch_size, self._max_queue = batch_size, max_queue
        self._flush_interval, self._retry_interval = flush_interval, retry_interval
        self._write_timeout = write_timeout
        spool_dir.mkdir(parents=True, exist_ok=True)
        self._queue: deque[LedgerRecord] = deque()
        self._in_hand: list[LedgerRecord] = []  # taken from the queue, not yet stored
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._spool: BinaryIO | None = None
        self._spool_files = 0
        self._down = self._outage_logged = self._overflow_logged = False
        self._closing = self._closed = False
        self._stats = LedgerStats()
        self._counters = {o: LEDGER_RECORDS.labels(o) for o in get_args(Outcome)}

    @property
    def stats(self) -> LedgerStats:
        return dataclasses.replace(self._stats, queued=len(self._queue))

    def submit(self, record: LedgerRecord) -> None:
        """Queue ``record``; past ``max_queue`` (or after close) spool it instead."""
        queue = self._queue
        if len(queue) < self._max_queue and not self._closed:
            queue.append(record)
            if len(queue) >= self._batch_size:
                self._wakeup.set()
            return
        self._spool_overflow(record)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="quotagate-ledger")

    # A caller's asyncio.timeout would cancel the drain without spooling what is left.
    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write what is queued; what cannot be written within ``timeout`` is spooled."""
        self._closing = True
        self._wakeup.set()
        task = self._task or asyncio.create_task(self._run())
        await asyncio.wait({task}, timeout=timeout)
        # A write still in progress is not cancelled mid-transaction: it ends by itself
        # (bounded by write_timeout), and once closed the task leaves the spool alone.
        self._closed = True
        left = [*self._in_hand, *self._queue]
        self._in_hand = []
        self._queue.clear()
        if left:
            self._append_to_spool(left)
        await self._close_spool()
        LEDGER_QUEUE_DEPTH.set(0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_replay = loop.time()
        while not (self._closing and not self._queue):
            full_batch = not self._closing and await self._wait_for_batch()
            try:
                queued = len(self._queue)
                # Woken by a full batch: write the full ones; the rest waits for the timer.
                await self._write_queued(
                    queued - queued % self._batch_size if full_batch else queued
                )
                if loop.time() >= next_replay and not self._closing:
                    next_replay = loop.time() + self._retry_interval
                    await self._recover()
            except Exception as exc:  # not the database's: the writer must go on
                self._rescue_batch_in_hand(exc)
            if len(self._queue) < self._max_queue // 2:
                self._overflow_logged = False
            LEDGER_QUEUE_DEPTH.set(len(self._queue))

    def _rescue_batch_in_hand(self, exc: Exception) -> None:
        """A spool write that failed keeps the batch in memory, to retry next time;
        anything else is a bug, and the batch is set aside so it cannot stop the writer."""
        batch, self._in_hand = self._in_hand, []
        if isinstance(exc, OSError):
            logger.error("ledger: cannot spool (%s); %d records kept", _name(exc), len(batch))
            self._queue.extendleft(reversed(batch))
        else:
            logger.error("ledger: unexpected error %s", _where(exc))
            self._set_aside(batch, exc)

    async def _wait_for_batch(self) -> bool:
        """True when woken by a full batch, False after ``flush_interval``."""
        try:
            async with asyncio.timeout(self._flush_interval):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        finally:
            self._wakeup.clear()
        return True

    async def _write_queued(self, count: int) -> None:
        """Store the first ``count`` queued records, a batch at a time."""
        while count > 0 and self._queue:
            size = min(count, self._batch_size, len(self._queue))
            self._in_hand = [self._queue.popleft() for _ in range(size)]
            count -= size
            if not self._down:
                try:
                    await self._write(self._in_hand, "written")
                    self._in_hand = []
                    continue
                except _UNAVAILABLE as exc:
                    self._enter_outage(exc)
            await self._spool_batch(self._in_hand)

    async def _write(self, records: Sequence[LedgerRecord], outcome: Outcome) -> None:
        """Insert ``records``; raises one of ``_UNAVAILABLE`` if the database failed."""
        try:
            inserted = await self._insert_rows(records)
        except (SQLAlchemyError, *_DRIVER_REFUSALS) as exc:
            if not _refuses_rows(exc):
                raise
            records = [r for r in records if await self._write_or_set_aside(r)]
            inserted = -1
        if inserted >= 0:
            self._stats.duplicates += len(records) - inserted
        self._count(outcome, len(records))

    async def _write_or_set_aside(self, record: LedgerRecord) -> bool:
        """One at a time, to find the refused rows (rare)."""
        try:
            await self._insert_rows([record])
        except (SQLAlchemyError, *_DRIVER_REFUSALS) as exc:
            if not _refuses_rows(exc):
                raise
            self._set_aside([record], exc)
            return False
        return True

    async def _insert_rows(self, records: Sequence[LedgerRecord]) -> int:
        """Rows inserted (duplicates are not), or -1 when the driver does not say."""
        if not records:  # a spool chunk of torn lines only: no statement takes no rows
            return 0
        insert = self._insert
        row, chunk = insert.row, insert.chunk
        rows = [row(r) for r in records]
        starts = range(0, len(rows) - len(rows) % chunk, chunk) if chunk else range(0)
        rest = rows[len(starts) * chunk :]
        counts = []
        async with asyncio.timeout(self._write_timeout), self._engine.begin() as conn:
            for start in starts:
                values = tuple(chain.from_iterable(rows[start : start + chunk]))
                counts.append((await conn.exec_driver_sql(insert.chunked, values)).rowcount)
            if rest:
                counts.append((await conn.exec_driver_sql(insert.single, rest)).rowcount)
        return -1 if min(counts) < 0 else sum(counts)

    def _enter_outage(self, exc: BaseException) -> None:
        self._down = True
        if not self._outage_logged:
            self._outage_logged = True
            logger.warning(
                "ledger: database unavailable (%s); spooling to %s", _name(exc), self._spool_dir
            )

    async def _recover(self) -> None:
        """Replay the spool files (after a successful probe, if the database was down)."""
        if self._down and not await self._probe():
            return
        try:
            replayed = await self._replay_spool()
        except _UNAVAILABLE as exc:
            self._enter_outage(exc)
            return
        self._down = False
        if replayed or self._outage_logged:
            logger.info("ledger: database available; %d spooled records replayed", replayed)
        self._outage_logged = False

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self._write_timeout), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except _UNAVAILABLE:
            return False
        return True

    async def _replay_spool(self) -> int:
        if self._spool is not None and self._spool.tell() > 0:
            await self._close_spool()  # unlocked, so it is replayed with the others
        replayed = 0
        for path in sorted(self._spool_dir.glob(SPOOL_GLOB)):
            if self._closing:
                break
            handle = _lock_for_replay(path)
            if handle is not None:
                with handle:
                    replayed += await self._replay_file(path, handle)
        return replayed

    async def _replay_file(self, path: Path, handle: BinaryIO) -> int:
        replayed = 0
        while lines := await asyncio.to_thread(_read_lines, handle, self._batch_size):
            records = _parse(lines, path)
            await self._write(records, "replayed")
            replayed += len(records)
            if self._closing:
                return replayed  # kept: the rest is replayed next time (duplicates ignored)
        # Unlinked while still locked: whoever opened it meanwhile sees st_nlink == 0.
        await asyncio.to_thread(path.unlink)
        return replayed

    def _spool_overflow(self, record: LedgerRecord) -> None:
        try:
            self._append_to_spool([record])
            if self._closed:
                self._close_spool_now()
        except (OSError, TypeError) as exc:
            logger.error("ledger: cannot spool %s (%s)", record.request_id, _name(exc))
            self._queue.append(record)
            return
        if not self._overflow_logged:
            self._overflow_logged = True
            logger.warning("ledger: queue over %d records; spooling the excess", self._max_queue)

    async def _spool_batch(self, records: list[LedgerRecord]) -> None:
        if records and not self._closed:
            self._append_to_spool(records)
            spool = self._spool
            assert spool is not None
            await asyncio.to_thread(_make_durable, spool, self._spool_dir)
        self._in_hand = []

    def _append_to_spool(self, records: Sequence[LedgerRecord]) -> None:
        if self._spool is None or self._spool.closed:
            self._spool_files += 1
            self._spool = _create_spool_file(self._spool_dir, self._spool_files)
        self._spool.write(b"".join(r.to_json() + b"\n" for r in records))
        self._count("spooled", len(records))

    async def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            await asyncio.to_thread(_close_durably, spool, self._spool_dir)

    def _close_spool_now(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            _close_durably(spool, self._spool_dir)

    def _set_aside(self, records: Sequence[LedgerRecord], exc: BaseException) -> None:
        ids = ", ".join(r.request_id for r in records)
        logger.error("ledger: set aside (%s): %s", _name(exc), ids)
        try:
            with open(self._spool_dir / f"rejected-{os.getpid()}.jsonl", "ab") as out:
                # default=str: a record that broke the writer may not fit to_json either.
                out.write(b"".join(orjson.dumps(r._asdict(), default=str) + b"\n" for r in records))
                _make_durable(out, self._spool_dir)
        except OSError as error:
            logger.error("ledger: records lost, cannot write (%s): %s", _name(error), ids)
            return
        self._count("rejected", len(records))

    def _count(self, outcome: Outcome, n: int) -> None:
        self._counters[outcome].inc(n)
        setattr(self._stats, outcome, getattr(self._stats, outcome) + n)


class _Insert(NamedTuple):
    """How the writer inserts a batch: ``chunk`` rows at a time with ``chunked`` (one
    statement of that many rows), the rest with ``single`` through the driver's
    executemany; ``row`` makes a record the driver's tuple."""

    single: str
    row: Callable[[LedgerRecord], tuple[Any, ...]]
    chunk: int = 0  # 0: executemany only
    chunked: str = ""


def _insert_statement(dialect: str, batch_size: int) -> _Insert:
    """The dialect's idempotent insert, handed to the driver with plain tuples:
    SQLAlchemy's statement compilation and per-row type processing cost ~3x the insert
    itself (``bench/ledger.py``), on the event loop's core. On SQLite a full batch goes
    in multi-row statements: executemany steps (and hands the GIL over) once a row,
    ~2 µs a row more (bench/RESULTS.md); asyncpg pipelines its executemany."""
    columns = ", ".join(COLUMNS)
    conflict = "ON CONFLICT (request_id) DO NOTHING"  # not OR IGNORE: that hides NOT NULL
    head = f"INSERT INTO {ledger.name} ({columns}) VALUES"
    if dialect == "sqlite":
        values = "(" + ", ".join("?" * len(COLUMNS)) + ")"
        single = f"{head} {values} {conflict}"
        chunk = min(batch_size, _sqlite_parameter_limit() // len(COLUMNS))
        if chunk < 2:
            return _Insert(single, _sqlite_row)
        return _Insert(
            single, _sqlite_row, chunk, f"{head} {', '.join([values] * chunk)} {conflict}"
        )
    if dialect == "postgresql":
        values = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        return _Insert(f"{head} ({values}) {conflict}", _row)
    raise ValueError(f"ledger: unsupported database {dialect!r}")


def _sqlite_parameter_limit() -> int:
    """The most parameters one statement may take in this SQLite build (999 before
    3.32, 32,766 since, more where the build raised it)."""
    with closing(sqlite3.connect(":memory:")) as probe:
        return probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def _row(record: LedgerRecord) -> tuple[Any, ...]:  # created_at is the second field
    if record.created_at.tzinfo is UTC:
        return record
    return (record[0], _utc(record.created_at), *record[2:])


def _sqlite_row(record: LedgerRecord) -> tuple[Any, ...]:
    """As SQLAlchemy's SQLite DateTime stores it (text, UTC, no offset, always six
    digits of microseconds), so that range queries compare like with like."""
    text = _utc(record.created_at).isoformat(" ", "microseconds")[:26]
    return (record[0], text, *record[2:])


def _refuses_rows(exc: BaseException) -> bool:
    """The database refused the rows themselves, not the connection: an integrity or
    data error (SQLSTATE classes 23 and 22), or the driver's own type or range check."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    root = _root_cause(exc)
    if isinstance(root, _DRIVER_REFUSALS):
        return True
    sqlstate = getattr(root, "sqlstate", None) or ""
    return str(sqlstate)[:2] in ("22", "23")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _name(exc: BaseException) -> str:
    """The root error's class only: messages can quote the SQL's parameters (records)."""
    return type(_root_cause(exc)).__name__


def _where(exc: BaseException) -> str:
    """Class and innermost frame, not the message: it could quote a record."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{_name(exc)} at {frames[-1].filename}:{frames[-1].lineno}" if frames else _name(exc)


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _create_spool_file(directory: Path, number: int) -> BinaryIO:
    stem = f"ledger-{time.time_ns():020d}-{os.getpid()}-{number:06d}"
    temp = directory / f".{stem}.new"
    handle = open(temp, "xb")  # noqa: SIM115 - stays open (and locked) until rotated
    # Locked before its name matches SPOOL_GLOB, so no one replays it while it is written.
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    os.rename(temp, directory / f"{stem}.jsonl")
    return handle


def _make_durable(handle: BinaryIO, directory: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the file's directory entry
    finally:
        os.close(fd)


def _close_durably(handle: BinaryIO, directory: Path) -> None:
    with handle:
        _make_durable(handle, directory)


def _lock_for_replay(path: Path) -> BinaryIO | None:
    """``path`` opened and locked, or None if another process holds it or it is gone."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - returned to the caller's ``with``
    except FileNotFoundError:
        return None
    except OSError as exc:  # not the database's failure: skip it, say so
        logger.warning("ledger: cannot open %s (%s)", path.name, _name(exc))
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(handle.fileno()).st_nlink > 0:
            return handle
    except BlockingIOError:
        pass
    handle.close()
    return None


def _read_lines(handle: BinaryIO, n: int) -> list[bytes]:
    return list(islice(handle, n))


def _parse(lines: list[bytes], path: Path) -> list[LedgerRecord]:
    records, unreadable = [], 0
    for line in lines:
        try:
            records.append(LedgerRecord.from_json(line))
        except (ValueError, TypeError, KeyError):  # a line torn by a crash mid-write
            unreadable += 1
    if unreadable:
        logger.warning("ledger: %d unreadable lines skipped in %s", unreadable, path.name)
    return records
