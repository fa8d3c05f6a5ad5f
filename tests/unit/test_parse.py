"""``parse``: the output cap and the number of choices a request may cost."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from quotagate.errors import BadRequest
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.parse import Parse

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
