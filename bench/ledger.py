"""Benchmark: usage ledger records/s sustained by LedgerWriter, SQLite and PostgreSQL.

Per database, in one run: N records submitted as fast as the loop allows (yielding to
the writer every ``--chunk`` records, as a busy gateway's loop would), then ``close()``.
Records/s is N over the time from the first submit to ``close()`` returning, when
every record is in the table; the rows are counted afterwards, and a run in which
anything was spooled (the database failed) is reported as invalid, not as a result.

SQLite is a file in a temporary directory; PostgreSQL is ``--pg-url`` with a schema
made for the run and dropped after it.

    .venv/bin/python bench/ledger.py [--records 50000] [--batch-size 500]

Run on demand; not a test. Prints a line for bench/RESULTS.md at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, text

from quotagate.budget.ledger import LedgerRecord, LedgerWriter
from quotagate.db.repo import Database
from quotagate.db.schema import ledger

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TARGET = 5_000  # records/s into each database


@dataclass
class Result:
    database: str
    records: int
    seconds: float
    stored: int
    spooled: int
    cpu: float  # this process's CPU seconds (all threads): what the gateway's core pays

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def valid(self) -> bool:
        return self.stored == self.records and self.spooled == 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="quotagate: usage ledger writer records/s.")
    p.add_argument("--records", type=int, default=50_000, help="records per database")
    p.add_argument("--batch-size", type=int, default=500, help="LedgerWriter batch_size")
    p.add_argument("--chunk", type=int, default=100, help="submits between yields to the loop")
    p.add_argument("--pg-url", default=PG_URL, help="PostgreSQL URL (a schema is made)")
    p.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    return p.parse_args()


def records(n: int, run: str) -> list[LedgerRecord]:
    """Built before the clock starts: the gateway builds its record on its own time."""
    now = datetime.now(UTC)
    return [
        LedgerRecord(
            request_id=f"{run}-{i:08d}", created_at=now, tenant_id=f"t{i % 50}",
            key_id=f"k{i % 500}", user_id=None, model="gpt-4o-mini", deployment="us-east",
            endpoint="chat", status="ok", http_status=200, stream=i % 2 == 0,
            prompt_tokens=120 + i % 7, completion_tokens=40 + i % 11, cost_micros=1_234 + i,
            reserved_tokens=1_024, reserved_micros=5_000, duration_ms=812.5, ttfb_ms=91.25,
        )
        for i in range(n)
    ]  # fmt: skip


async def measure(db: Database, name: str, args: argparse.Namespace, spool: Path) -> Result:
    batch = records(args.records, secrets.token_hex(4))
    writer = LedgerWriter(db.engine, spool, batch_size=args.batch_size)
    await writer.start()
    start, cpu = time.perf_counter(), time.process_time()
    for i, record in enumerate(batch, 1):
        writer.submit(record)
        if i % args.chunk == 0:
            await asyncio.sleep(0)
    await writer.close(timeout=600)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    async with db.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(ledger))).scalar_one()
    return Result(name, args.records, seconds, stored, writer.stats.spooled, cpu)


async def run_sqlite(args: argparse.Namespace, tmp: Path) -> Result:
    db = Database(f"sqlite+aiosqlite:///{tmp}/ledger.db")
    try:
        await db.create_schema()
        return await measure(db, "SQLite", args, tmp / "spool-sqlite")
    finally:
        await db.close()


async def run_postgres(args: argparse.Namespace, tmp: Path) -> Result:
    db = Database(args.pg_url, schema=f"qg_bench_{secrets.token_hex(6)}")
    try:
        await db.create_schema()
        return await measure(db, "PostgreSQL", args, tmp / "spool-pg")
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE'))
        await db.close()


def describe(result: Result) -> str:
    verdict = "met" if result.rate >= TARGET else "NOT met"
    problems = "" if result.valid else (
        f"  INVALID: {result.stored} rows stored, {result.spooled} spooled"
    )  # fmt: skip
    return (
        f"{result.database}: {result.records:,} records in {result.seconds:.2f} s = "
        f"{result.rate:,.0f} records/s (target ≥ {TARGET:,}: {verdict}), "
        f"{result.cpu / result.records * 1e6:.1f} µs of this process's CPU a record{problems}"
    )


def results_line(results: list[Result], args: argparse.Namespace) -> str:
    rates = "; ".join(
        f"{r.database} {r.rate:,.0f} records/s, {r.cpu / r.records * 1e6:.1f} µs CPU each"
        for r in results
    )
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"- Ledger writer ({date}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}): {rates} ({args.records:,} records each, "
        f"batch {args.batch_size}, submitted then close(); `{' '.join(sys.argv)}`)"
    )


async def main_async(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="qg-ledger-") as tmp:
        results = [await run_sqlite(args, Path(tmp))]
        if not args.skip_postgres:
            results.append(await run_postgres(args, Path(tmp)))
    return results


def main() -> int:
    args = parse_args()
    if args.records < 1 or args.batch_size < 1 or args.chunk < 1:
        raise SystemExit("bench: --records, --batch-size and --chunk must be ≥ 1")
    results = asyncio.run(main_async(args))
    for result in results:
        print(describe(result))
    print()
    print(results_line(results, args))
    if not all(r.valid for r in results):
        return 2
    return 0 if all(r.rate >= TARGET for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
