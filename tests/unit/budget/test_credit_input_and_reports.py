"""The admin API refuses a credit's bad expiry with a 422 (never a 500; credit_request's
own refusals are in tests/unit/limits/test_quotas.py), the admin usage report labels
costs in the plans' currency, and a cache hit is a success in the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from quotagate.admin.api import build_admin_app
from quotagate.auth.principal import Principal
from quotagate.budget.ledger import LedgerRecord
from quotagate.budget.records import request_record
from quotagate.config.loader import parse_policy
from quotagate.config.snapshot import Snapshot
from quotagate.db.repo import Database
from quotagate.db.schema import ledger
from quotagate.pipeline.context import RequestContext
from quotagate.settings import Settings

POLICY = """
models:
  gpt-3.5-turbo:
    price: {input_per_1m: 0.5, output_per_1m: 1.5}
    deployments: [{url: "http://127.0.0.1:9/v1"}]
plans:
  euro:
    models: [gpt-3.5-turbo]
    quotas:
      - {scope: tenant, tokens: 100000, per: day}
    budget: {amount: 500.00, currency: EUR, per: month}
"""
TOKEN = "admin-test-bootstrap-token"


@pytest.fixture
def snapshot() -> Snapshot:
    return Snapshot.compile(parse_policy(POLICY, env={}))


@pytest.fixture
async def admin(
    db: Database, snapshot: Snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("QUOTAGATE_ADMIN_TOKEN", TOKEN)

    async def publish(_: Any) -> None:
        return None

    gateway = SimpleNamespace(
        db=db, settings=Settings(None, tmp_path), snapshot=snapshot,
        identity=SimpleNamespace(jwt=None), invalidation=SimpleNamespace(publish=publish),
    )  # fmt: skip
    app = build_admin_app(gateway)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers=headers
    ) as client:
        yield client


# --- credits: a bad expiry over the API -----------------------------------------------------


async def test_admin_credit_with_an_out_of_range_expiry_is_a_422(
    admin: httpx.AsyncClient, db: Database
) -> None:
    """POST /admin/v1/credits with expires "99999999999d" answers 422 invalid_credit,
    never 500 internal_error."""
    await db.create_tenant("acme", "euro")
    body = {"tenant": "acme", "kind": "burst", "tokens": 5000, "expires": "99999999999d"}
    answer = await admin.post("/admin/v1/credits", json=body)
    assert answer.status_code == 422, answer.text


# --- the admin usage report ------------------------------------------------------------


async def test_admin_usage_reports_the_plans_currency(
    admin: httpx.AsyncClient, db: Database
) -> None:
    """GET /admin/v1/usage labels costs in the plans' currency, as `quotagate usage`
    does (EUR here), not always USD."""
    tenant = await db.create_tenant("acme", "euro")
    row = LedgerRecord(
        "r1", datetime.now(UTC), "chat", "ok",
        200, tenant.id, "k1", None, "gpt-3.5-turbo", prompt_tokens=10, cost_micros=5,
    ).as_row()  # fmt: skip
    async with db.engine.begin() as conn:
        await conn.execute(ledger.insert(), [row])
    answer = await admin.get("/admin/v1/usage")
    assert answer.status_code == 200, answer.text
    assert [r["currency"] for r in answer.json()] == ["EUR"]


# --- the ledger status of a cache hit --------------------------------------------------


def test_a_cache_hit_is_not_recorded_as_an_error() -> None:
    """A request answered 200 from the response cache (degrade) is a success in the
    ledger (`usage --by status`), not status "error"."""
    endpoint = SimpleNamespace(name="chat.completions")
    ctx = RequestContext({"type": "http", "client": ("10.0.0.1", 1)}, None, None, endpoint)
    ctx.principal = Principal("tenant-1", "acme", "key-1", "user-1", "pro")
    ctx.record_id, ctx.started_at, ctx.model = "rec-1", 1_795_000_000.0, "gpt-4"
    ctx.decision, ctx.status = "cache_hit", 200
    record = request_record(ctx, 1.0, 2.0, (0, 0), 0)
    assert record.status != "error"
