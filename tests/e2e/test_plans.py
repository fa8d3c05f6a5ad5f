"""What a plan allows: its models (403/404, the model list) and its max_tokens cap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from e2e_clients import CHAT_MODEL, KeyIssuer, MockUpstream, assert_sdk_error, messages, sdk

from harness import Gateway

FREE_CAP = 512  # plans.free.max_tokens and plans.strict.max_tokens in the shared policy
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
# A request may name both limits; one within the cap must not carry the other past it.
BOTH_FIELDS: list[dict[str, Any]] = [
    {"max_completion_tokens": 100, "max_tokens": 5000},
    {"max_completion_tokens": 5000, "max_tokens": 100},
]


@pytest.fixture(scope="module")
def free_client(gateway: Gateway, keys: KeyIssuer) -> Iterator[openai.OpenAI]:
    """A free key of this module's own: its tests spend 8 of its 10 requests a minute."""
    with sdk(gateway, keys.issue("free").key) as client:
        yield client


def test_free_plan_may_not_use_gpt4(gateway: Gateway, keys: KeyIssuer) -> None:
    with (
        sdk(gateway, keys.shared("free").key) as client,
        pytest.raises(openai.PermissionDeniedError) as err,
    ):
        client.chat.completions.create(model="gpt-4", messages=messages("hello"))
    assert assert_sdk_error(err.value, 403, "model_not_allowed")["param"] == "model"


@pytest.mark.parametrize("plan", ["free", "enterprise"])
def test_unknown_model_is_not_found_on_any_plan(
    gateway: Gateway, keys: KeyIssuer, plan: str
) -> None:
    with (
        sdk(gateway, keys.shared(plan).key) as client,
        pytest.raises(openai.NotFoundError) as err,
    ):
        client.chat.completions.create(model="gpt-nonexistent", messages=messages("hello"))
    assert assert_sdk_error(err.value, 404, "model_not_found")["param"] == "model"


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ("free", {"gpt-3.5-turbo", "text-embedding-3-small"}),
        ("pro", {"gpt-3.5-turbo", "gpt-4", "text-embedding-3-small"}),
        ("enterprise", {"gpt-3.5-turbo", "gpt-4", "text-embedding-3-small"}),  # "*": all
    ],
)
def test_model_list_shows_only_the_plans_models(
    gateway: Gateway, keys: KeyIssuer, plan: str, expected: set[str]
) -> None:
    with sdk(gateway, keys.shared(plan).key) as client:
        models = client.models.list().data
    assert {m.id for m in models} == expected
    assert len(models) == len(expected)


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ({"max_tokens": 2000}, {"max_tokens": FREE_CAP}),
        ({"max_completion_tokens": 2000}, {"max_completion_tokens": FREE_CAP}),
        ({"max_tokens": 100}, {"max_tokens": 100}),
        ({}, {"max_tokens": FREE_CAP}),  # no limit asked: the plan's cap is filled in
    ],
    ids=["over-cap", "over-cap-completion-tokens", "under-cap", "absent"],
)
def test_free_plan_clamps_max_tokens_to_its_cap(
    free_client: openai.OpenAI,
    mock: MockUpstream,
    sent: dict[str, Any],
    forwarded: dict[str, int],
) -> None:
    completion = free_client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("clamp me"), **sent
    )
    assert completion.choices[0].message.content
    body = mock.last_request()["body"]
    assert {k: body.get(k) for k in TOKEN_LIMIT_FIELDS} == {
        "max_tokens": None,
        "max_completion_tokens": None,
        **forwarded,
    }


def test_clamped_answer_stops_at_the_cap(free_client: openai.OpenAI) -> None:
    completion = free_client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("[[mock:tokens=600]] a long answer"), max_tokens=2000
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == FREE_CAP
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize("sent", BOTH_FIELDS, ids=["max_tokens-over", "completion-over"])
def test_clamp_leaves_no_token_limit_field_over_the_cap(
    free_client: openai.OpenAI, mock: MockUpstream, sent: dict[str, Any]
) -> None:
    """Upstreams differ in which of the two fields they obey: neither may exceed the cap."""
    free_client.chat.completions.create(model=CHAT_MODEL, messages=messages("both"), **sent)
    body = mock.last_request()["body"]
    over = {f: body[f] for f in TOKEN_LIMIT_FIELDS if (body.get(f) or 0) > FREE_CAP}
    assert not over, f"forwarded above the plan's cap of {FREE_CAP}: {over}"


@pytest.fixture(scope="module")
def strict_client(gateway: Gateway, keys: KeyIssuer) -> Iterator[openai.OpenAI]:
    with sdk(gateway, keys.shared("strict").key) as client:
        yield client


@pytest.mark.parametrize(
    "sent",
    [{"max_tokens": FREE_CAP + 1}, {"max_completion_tokens": FREE_CAP + 1}, *BOTH_FIELDS],
    ids=["max_tokens", "max_completion_tokens", "both-max_tokens-over", "both-completion-over"],
)
def test_reject_plan_refuses_a_token_limit_over_its_cap(
    strict_client: openai.OpenAI, mock: MockUpstream, sent: dict[str, Any]
) -> None:
    seen = mock.requests_seen()
    with pytest.raises(openai.PermissionDeniedError) as err:
        strict_client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi"), **sent)
    error = assert_sdk_error(err.value, 403, "max_tokens_exceeded")
    assert error["param"] in TOKEN_LIMIT_FIELDS
    assert mock.requests_seen() == seen


def test_reject_plan_accepts_max_tokens_at_its_cap(
    strict_client: openai.OpenAI, mock: MockUpstream
) -> None:
    strict_client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("hello"), max_tokens=FREE_CAP
    )
    assert mock.last_request()["body"]["max_tokens"] == FREE_CAP


def test_embeddings_get_no_max_tokens(free_client: openai.OpenAI, mock: MockUpstream) -> None:
    free_client.embeddings.create(model="text-embedding-3-small", input="embed me")
    body = mock.last_request()["body"]
    assert "max_tokens" not in body
    assert "max_completion_tokens" not in body
