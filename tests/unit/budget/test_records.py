"""The ledger row of a request: each of the context's values in its own column.

``request_record`` builds the record positionally (cheaper per request than keywords),
so a value in the wrong position would land in another column of the same type; every
value here is distinct, so any swap shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from quotagate.auth.principal import Principal
from quotagate.budget.records import request_record, unsettled_record
from quotagate.budget.reserve import reservation_record
from quotagate.pipeline.context import RequestContext


def context(**fields: Any) -> RequestContext:
    endpoint = SimpleNamespace(name="chat.completions")
    ctx = RequestContext({"type": "http", "client": ("10.0.0.1", 1)}, None, None, endpoint)
    ctx.principal = Principal("tenant-1", "acme", "key-1", "user-1", "pro")
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def test_every_value_lands_in_its_column() -> None:
    ctx = context(
        record_id="rec-1",
        started_at=1_795_000_000.25,
        model="gpt-4",
        target=SimpleNamespace(base_url="http://upstream/v1"),
        decision="allowed",
        status=200,
        denial="none-really",
        stream=True,
        reserved_tokens=1_111,
        reserved_micros=2_222,
        ttfb=10.5,
    )
    row = request_record(ctx, started=10.0, ended=10.75, charged=(33, 44), micros=555)._asdict()
    assert row == {
        "request_id": "rec-1",
        "created_at": datetime.fromtimestamp(1_795_000_000.25, UTC),
        "endpoint": "chat.completions",
        "status": "ok",
        "http_status": 200,
        "tenant_id": "tenant-1",
        "key_id": "key-1",
        "user_id": "user-1",
        "model": "gpt-4",
        "deployment": "http://upstream/v1",
        "denial_reason": "none-really",
        "stream": True,
        "prompt_tokens": 33,
        "completion_tokens": 44,
        "cost_micros": 555,
        "reserved_tokens": 1_111,
        "reserved_micros": 2_222,
        "duration_ms": 750.0,
        "ttfb_ms": 500.0,
    }


def test_a_refused_request_without_a_target_or_first_byte() -> None:
    ctx = context(record_id="rec-2", decision="refused", status=402, denial="budget-month")
    record = request_record(ctx, started=1.0, ended=1.002, charged=(0, 0), micros=0)
    assert (record.status, record.http_status, record.denial_reason) == (
        "denied", 402, "budget-month",
    )  # fmt: skip
    assert (record.model, record.deployment, record.ttfb_ms) == (None, None, None)
    assert record.duration_ms == 2.0


def test_a_reservation_names_the_model_and_deployment_that_are_to_serve_it() -> None:
    """A reaper writes the unsettled row from the reservation: a reservation made for a
    fallback (``Limit.move``) names the fallback, not the model the client asked for."""
    asked = SimpleNamespace(model="gpt-4", base_url="http://gpt4/v1")
    fallback = SimpleNamespace(model="gpt-3.5-turbo", base_url="http://cheap/v1")
    ctx = context(
        record_id="rec-3", started_at=1_795_000_000.5, model="gpt-4", target=asked,
        reserved_tokens=70, reserved_micros=900,
    )  # fmt: skip
    own = unsettled_record(reservation_record(ctx, 30.0).member)
    moved = unsettled_record(reservation_record(ctx, 30.0, fallback).member)  # type: ignore[arg-type]
    assert (own.model, own.deployment) == ("gpt-4", "http://gpt4/v1")
    assert (moved.model, moved.deployment) == ("gpt-3.5-turbo", "http://cheap/v1")
    assert (moved.request_id, moved.status, moved.reserved_tokens, moved.cost_micros) == (
        "rec-3", "unsettled", 70, 900,
    )  # fmt: skip
