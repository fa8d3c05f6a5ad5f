"""Usage reports: grouping on SQLite and on the local PostgreSQL server, and formats."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotagate.budget.ledger import LedgerRecord
from quotagate.budget.pricing import format_money
from quotagate.budget.usage_report import UsageRow, format_rows, usage_report
from quotagate.db.repo import Database
from quotagate.db.schema import ledger

TOKYO = timezone(timedelta(hours=9))


def entry(request_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return LedgerRecord(
        request_id=request_id, created_at=at, endpoint="chat", http_status=200, **fields
    ).as_row()


# (tenant, key, model, UTC day, status, prompt, completion, cost in micro-units)
ENTRIES = [
    entry("r1", datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC), tenant_id="t1",
          key_id="k1", model="m-a", status="ok", prompt_tokens=10, completion_tokens=20,
          cost_micros=1_000_001),
    entry("r2", datetime(2026, 3, 2, 0, 0, tzinfo=UTC), tenant_id="t1", key_id="k2",
          model="m-b", status="ok", prompt_tokens=5, completion_tokens=7,
          cost_micros=2_500_000),
    entry("r3", datetime(2026, 3, 2, 12, 0, tzinfo=UTC), tenant_id="t2", key_id="k3",
          model="m-a", status="error", prompt_tokens=100, cost_micros=999_999),
    # 08:00 in Tokyo on the 3rd is 23:00 UTC on the 2nd.
    entry("r4", datetime(2026, 3, 3, 8, 0, tzinfo=TOKYO), tenant_id="t2", key_id="k3",
          model="m-a", status="denied"),
    entry("r5", datetime(2026, 3, 1, 10, 0, tzinfo=UTC), status="denied"),  # no key: no tenant
]  # fmt: skip


@pytest.fixture
async def db(db: Database) -> Database:
    """The shared database (SQLite and PostgreSQL), holding the ledger rows above."""
    async with db.engine.begin() as conn:
        await conn.execute(ledger.insert(), ENTRIES)
    return db


def table(rows: list[UsageRow]) -> list[tuple[Any, ...]]:
    return [
        (*r.group.values(), r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens,
         r.cost_micros)
        for r in rows
    ]  # fmt: skip


async def report(db: Database, *group_by: str, **options: Any) -> list[tuple[Any, ...]]:
    options = {"since": None, "until": None} | options
    return table(await usage_report(db.engine, group_by=group_by, **options))


async def test_grouped_by_tenant(db: Database) -> None:
    assert await report(db, "tenant") == [
        (None, 1, 0, 0, 0, 0),
        ("t1", 2, 15, 27, 42, 3_500_001),
        ("t2", 2, 100, 0, 100, 999_999),
    ]


async def test_grouped_by_key_and_by_model(db: Database) -> None:
    assert await report(db, "key") == [
        (None, 1, 0, 0, 0, 0),
        ("k1", 1, 10, 20, 30, 1_000_001),
        ("k2", 1, 5, 7, 12, 2_500_000),
        ("k3", 2, 100, 0, 100, 999_999),
    ]
    assert await report(db, "model") == [
        (None, 1, 0, 0, 0, 0),
        ("m-a", 3, 110, 20, 130, 2_000_000),
        ("m-b", 1, 5, 7, 12, 2_500_000),
    ]


async def test_grouped_by_utc_day(db: Database) -> None:
    assert await report(db, "day") == [
        ("2026-03-01", 2, 10, 20, 30, 1_000_001),
        ("2026-03-02", 3, 105, 7, 112, 3_499_999),
    ]


async def test_grouped_by_several_keys_and_status(db: Database) -> None:
    assert await report(db, "tenant", "model") == [
        (None, None, 1, 0, 0, 0, 0),
        ("t1", "m-a", 1, 10, 20, 30, 1_000_001),
        ("t1", "m-b", 1, 5, 7, 12, 2_500_000),
        ("t2", "m-a", 2, 100, 0, 100, 999_999),
    ]
    assert await report(db, "status") == [
        ("denied", 2, 0, 0, 0, 0),
        ("error", 1, 100, 0, 100, 999_999),
        ("ok", 2, 15, 27, 42, 3_500_001),
    ]


async def test_no_group_is_one_total_row(db: Database) -> None:
    assert await report(db) == [(5, 115, 27, 142, 4_500_000)]


async def test_time_window_and_tenant_filter(db: Database) -> None:
    march_2 = datetime(2026, 3, 2, tzinfo=UTC)
    # until is exclusive: r4 at 23:00 UTC is out; a naive time is UTC.
    window = {"since": march_2, "until": datetime(2026, 3, 2, 23, 0)}
    assert await report(db, "tenant", **window) == [
        ("t1", 1, 5, 7, 12, 2_500_000),
        ("t2", 1, 100, 0, 100, 999_999),
    ]
    since_tokyo = datetime(2026, 3, 2, 9, 0, tzinfo=TOKYO)  # = march_2 00:00 UTC
    assert await report(db, "day", since=since_tokyo, tenant_id="t2") == [
        ("2026-03-02", 2, 100, 0, 100, 999_999),
    ]
    assert await report(db, "day", since=datetime(2027, 1, 1, tzinfo=UTC)) == []


async def test_an_unknown_group_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="unknown group 'user'"):
        await report(db, "tenant", "user")


ROWS = [
    UsageRow({"tenant": "t1", "day": "2026-03-01"}, 1_234, 10_000, 2_345, 12_000_345),
    UsageRow({"tenant": None, "day": "2026-03-02"}, 7, 0, 0, 5),
]


def test_table_format() -> None:
    assert format_rows(ROWS, "table", currency="EUR") == (
        "tenant  day         requests  prompt  completion   total  cost (EUR)\n"
        "------  ----------  --------  ------  ----------  ------  ----------\n"
        "t1      2026-03-01     1,234  10,000       2,345  12,345   12.000345\n"
        "-       2026-03-02         7       0           0       0    0.000005\n"
    )


def test_json_format() -> None:
    assert orjson.loads(format_rows(ROWS, "json")) == [
        {"tenant": "t1", "day": "2026-03-01", "requests": 1_234, "prompt_tokens": 10_000,
         "completion_tokens": 2_345, "total_tokens": 12_345, "cost_micros": 12_000_345,
         "cost": "12.000345", "currency": "USD"},
        {"tenant": None, "day": "2026-03-02", "requests": 7, "prompt_tokens": 0,
         "completion_tokens": 0, "total_tokens": 0, "cost_micros": 5, "cost": "0.000005",
         "currency": "USD"},
    ]  # fmt: skip


def test_csv_format() -> None:
    out = format_rows(ROWS, "csv")
    assert out.splitlines()[0] == (
        "tenant,day,requests,prompt_tokens,completion_tokens,total_tokens,cost_micros,cost,currency"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["cost"] == "12.000345" and rows[0]["total_tokens"] == "12345"
    assert rows[1]["tenant"] == "" and rows[1]["cost"] == "0.000005"


def test_formats_of_no_rows() -> None:
    assert orjson.loads(format_rows([], "json")) == []
    assert format_rows([], "csv").startswith("requests,prompt_tokens,")
    assert format_rows([], "table").splitlines()[0].startswith("requests")


def test_money_is_printed_from_the_integer() -> None:
    assert format_money(12_000_345) == "12.000345"
    assert format_money(0) == "0.000000"
    assert format_money(-1) == "-0.000001"
    assert format_money(10**18 + 1) == "1000000000000.000001"  # beyond a float's precision
    assert f"{(10**18 + 1) / 1e6:.6f}" != "1000000000000.000001"


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_money_matches_exact_decimal_division(micros: int) -> None:
    assert format_money(micros) == f"{Decimal(micros).scaleb(-6):.6f}"
