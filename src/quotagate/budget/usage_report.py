"""Usage reports from the ledger: requests, tokens and cost, grouped and formatted.

Groups are ``tenant`` (the tenant id; the caller maps ids to names), ``key``,
``model``, ``day`` (the UTC date, ``YYYY-MM-DD``) and ``status``. Money stays integer
micro-units until it is printed, and is printed from the integer, never a float.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy import BigInteger, RowMapping, String, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from quotagate.budget.pricing import format_money
from quotagate.db.schema import ledger

if TYPE_CHECKING:
    from quotagate.config.schema import Policy

Format = Literal["table", "json", "csv"]
METRICS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_micros")


class UtcDay(FunctionElement[str]):
    """The UTC date of a timestamp column as ``YYYY-MM-DD``, on SQLite and PostgreSQL."""

    type = String()
    inherit_cache = True


@compiles(UtcDay, "sqlite")
def _utc_day_sqlite(element: UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps DateTime as text, "YYYY-MM-DD HH:MM:SS.ffffff", in UTC (the ledger
    # writer stores UTC).
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(UtcDay, "postgresql")
def _utc_day_postgresql(element: UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


GROUPS: Mapping[str, ColumnElement[Any]] = {
    "tenant": ledger.c.tenant_id,
    "key": ledger.c.key_id,
    "model": ledger.c.model,
    "day": UtcDay(ledger.c.created_at),
    "status": ledger.c.status,
}


@dataclass(slots=True, frozen=True)
class UsageRow:
    group: Mapping[str, str | None]  # by the report's group_by, in its order
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


async def usage_report(
    engine: AsyncEngine,
    *,
    group_by: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    tenant_id: str | None = None,
) -> list[UsageRow]:
    """Totals per group over ``since <= created_at < until`` (naive times are UTC)."""
    if unknown := [g for g in group_by if g not in GROUPS]:
        raise ValueError(f"unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    keys = [GROUPS[g].label(g) for g in group_by]
    order = [k.asc().nulls_first() for k in keys]  # one order on both databases
    query = select(*keys, *_totals()).group_by(*keys).order_by(*order)
    if since is not None:
        query = query.where(ledger.c.created_at >= _utc(since))
    if until is not None:
        query = query.where(ledger.c.created_at < _utc(until))
    if tenant_id is not None:
        query = query.where(ledger.c.tenant_id == tenant_id)
    async with engine.connect() as conn:
        result = await conn.execute(query)
        return [_usage_row(row, group_by) for row in result.mappings()]


def _totals() -> list[ColumnElement[int]]:
    def total(column: ColumnElement[int]) -> ColumnElement[int]:
        # PostgreSQL sums bigint to numeric (a Decimal in Python): cast back to integer.
        return cast(func.coalesce(func.sum(column), 0), BigInteger)

    return [
        func.count().label("requests"),
        total(ledger.c.prompt_tokens).label("prompt_tokens"),
        total(ledger.c.completion_tokens).label("completion_tokens"),
        total(ledger.c.cost_micros).label("cost_micros"),
    ]


def _usage_row(row: RowMapping, group_by: Sequence[str]) -> UsageRow:
    return UsageRow(
        group={g: row[g] for g in group_by},
        requests=row["requests"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost_micros=row["cost_micros"],
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def report_currency(policy: Policy) -> str:
    """The currency a report labels costs in: the first plan budget's, else USD."""
    return next((p.budget.currency for p in policy.plans.values() if p.budget), "USD")


def format_rows(rows: Sequence[UsageRow], fmt: Format, currency: str = "USD") -> str:
    """``rows`` as an aligned text table, a JSON list of objects, or CSV with a header.

    JSON and CSV carry ``cost_micros`` (exact, an integer) and ``cost`` (a decimal
    string in ``currency`` units)."""
    if fmt == "table":
        return _table(rows, currency)
    records = [_as_record(row, currency) for row in rows]
    if fmt == "json":
        return orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        return _csv([*(rows[0].group if rows else ()), *METRICS, "cost", "currency"], records)
    raise ValueError(f"unknown format {fmt!r}; choose from table, json, csv")


def _as_record(row: UsageRow, currency: str) -> dict[str, Any]:
    return {
        **row.group,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.total_tokens,
        "cost_micros": row.cost_micros,
        "cost": format_money(row.cost_micros),
        "currency": currency,
    }


def _csv(header: list[str], records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def _table(rows: Sequence[UsageRow], currency: str) -> str:
    groups = list(rows[0].group) if rows else []
    header = [*groups, "requests", "prompt", "completion", "total", f"cost ({currency})"]
    body = [
        [
            *("-" if v is None else str(v) for v in row.group.values()),
            *(f"{n:,}" for n in (row.requests, row.prompt_tokens, row.completion_tokens)),
            f"{row.total_tokens:,}",
            format_money(row.cost_micros),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        texts = [
            c.ljust(w) if i < len(groups) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(texts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)]) + "\n"


def with_tenant_name(row: UsageRow, names: Mapping[str, str]) -> UsageRow:
    """A report row with its tenant id replaced by the tenant's name."""
    tenant = row.group.get("tenant")
    if tenant is None:
        return row
    return dataclasses.replace(row, group={**row.group, "tenant": names.get(tenant, tenant)})
