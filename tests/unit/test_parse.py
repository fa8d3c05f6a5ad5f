"""``parse``: the output cap and the number of choices a request may cost; the cap the
gateway sets itself, and the field it goes in."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from quotagate.errors import BadRequest
from quotagate.mock_llm.errors import InvalidRequest
from quotagate.mock_llm.openai_requests import read_chat_request
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.forward import _write_cap
from quotagate.pipeline.parse import TOKEN_FIELDS, Parse, set_output_cap

POLICY = SimpleNamespace(
    snapshot=SimpleNamespace(policy=SimpleNamespace(server=SimpleNamespace(max_body_bytes=1 << 20)))
)


async def parsed(**fields: Any) -> RequestContext:
    body = orjson.dumps({"model": "gpt-4", "prompt": "hi", **fields})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    endpoint = SimpleNamespace(name="completions", model=None)
    ctx = RequestContext({"type": "http", "headers": []}, receive, None, endpoint)
    await Parse(POLICY)(ctx)  # type: ignore[arg-type]
    return ctx


@pytest.mark.parametrize(
    ("fields", "max_tokens", "choices"),
    [
        ({}, None, 1),
        ({"max_tokens": 50, "max_completion_tokens": 80}, 80, 1),  # either may be honoured
        ({"n": 3}, None, 3),
        ({"n": 2, "best_of": 5}, None, 5),  # best_of completions are generated and billed
    ],
)
async def test_the_largest_cap_and_choice_count_are_what_a_request_may_cost(
    fields: dict[str, Any], max_tokens: int | None, choices: int
) -> None:
    ctx = await parsed(**fields)
    assert (ctx.max_tokens, ctx.choices) == (max_tokens, choices)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 0}, "n"), ({"best_of": 129}, "best_of"), ({"max_tokens": True}, "max_tokens"),
     ({"max_completion_tokens": 10**7 + 1}, "max_completion_tokens")],
)  # fmt: skip
async def test_a_bad_cap_or_choice_count_is_a_400_naming_its_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as info:
        await parsed(**fields)
    assert info.value.param == param


async def test_a_cap_the_gateway_added_moves_to_the_field_of_the_model_that_serves() -> None:
    """A request that named no cap gets the gateway's in the serving model's field; a
    retry on a model that takes the other field moves it there (never both: a reasoning
    model refuses max_tokens)."""
    ctx = await parsed()
    ctx.endpoint.name = "chat.completions"
    set_output_cap(ctx, 64)
    assert (ctx.output_cap, ctx.max_tokens, ctx.payload_changed) == (64, 64, False)
    for field in ("max_completion_tokens", "max_tokens", "max_completion_tokens"):
        ctx.payload_changed = False
        _write_cap(ctx, SimpleNamespace(cap_field=field))  # type: ignore[arg-type]
        assert {f: ctx.payload.get(f) for f in TOKEN_FIELDS} == {
            "max_tokens": None, "max_completion_tokens": None, field: 64,
        }  # fmt: skip
        assert ctx.payload_changed
    ctx.endpoint.name = "completions"  # legacy completions know max_tokens only
    _write_cap(ctx, SimpleNamespace(cap_field="max_completion_tokens"))  # type: ignore[arg-type]
    assert (ctx.payload.get("max_tokens"), ctx.payload.get("max_completion_tokens")) == (64, None)


async def test_a_lower_cap_lowers_only_the_fields_above_it() -> None:
    ctx = await parsed(max_tokens=50, max_completion_tokens=200)
    set_output_cap(ctx, 100)
    assert (ctx.payload["max_tokens"], ctx.payload["max_completion_tokens"]) == (50, 100)
    assert (ctx.max_tokens, ctx.output_cap, ctx.payload_changed) == (100, None, True)


def test_the_mock_refuses_max_tokens_for_a_reasoning_model_as_openai_does() -> None:
    body = {"model": "o3-mini", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidRequest) as info:
        read_chat_request({**body, "max_tokens": 10})
    assert info.value.param == "max_tokens"
    assert read_chat_request({**body, "max_completion_tokens": 10}).max_tokens == 10
