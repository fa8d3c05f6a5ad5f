import math

import pytest

from quotagate.mock_llm import count_tokens
from quotagate.mock_llm.errors import InvalidRequest
from quotagate.mock_llm.generation import (
    Choice,
    embedding_vector,
    generate_deltas,
    plan_choices,
    prompt_seed,
)
from quotagate.mock_llm.openai_requests import read_chat_request, read_text_request


def _chat(content: str, **extra: object) -> list[Choice]:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return plan_choices(read_chat_request({**body, **extra}), default_tokens=16)


def test_same_prompt_gives_the_same_answer() -> None:
    assert _chat("hello")[0].content == _chat("hello")[0].content


def test_different_prompts_give_different_answers() -> None:
    assert _chat("hello")[0].content != _chat("goodbye")[0].content


def test_answers_are_pinned_across_processes() -> None:
    # blake2b, not the per-process salted hash(): answers agree across restarts.
    assert prompt_seed("hello") == 0x7D34E501A8EDB6A7
    assert "".join(generate_deltas(prompt_seed("hello"), 6)) == (
        "Deadline policy shard key simple stream"
    )


@pytest.mark.parametrize("count", [0, 1, 2, 7, 16, 100, 1000])
def test_content_re_tokenizes_to_the_token_count(count: int) -> None:
    for seed in range(50):
        deltas = generate_deltas(seed, count)
        assert len(deltas) == count
        assert count_tokens("".join(deltas)) == count


def test_each_delta_is_exactly_one_token() -> None:
    for delta in generate_deltas(7, 200):
        assert count_tokens(delta) == 1


def test_default_length_and_stop() -> None:
    [choice] = _chat("hello")
    assert len(choice.deltas) == 16
    assert choice.finish_reason == "stop"


def test_tokens_directive_sets_the_length() -> None:
    [choice] = _chat("please [[mock:tokens=40]]")
    assert count_tokens(choice.content) == 40
    assert choice.finish_reason == "stop"


def test_max_tokens_caps_the_directive_and_reports_length() -> None:
    [choice] = _chat("please [[mock:tokens=40]]", max_tokens=5)
    assert count_tokens(choice.content) == 5
    assert choice.finish_reason == "length"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    [choice] = _chat("hi", max_tokens=3, max_completion_tokens=4)
    assert len(choice.deltas) == 4


def test_directive_below_max_tokens_stops() -> None:
    [choice] = _chat("[[mock:tokens=3]]", max_tokens=3)
    assert (len(choice.deltas), choice.finish_reason) == (3, "stop")


def test_n_choices_differ_and_are_indexed() -> None:
    choices = _chat("hello", n=3)
    assert [choice.index for choice in choices] == [0, 1, 2]
    assert len({choice.content for choice in choices}) == 3
    assert choices[0].content == _chat("hello")[0].content


def test_text_prompts_give_one_choice_each() -> None:
    request = read_text_request({"model": "m", "prompt": ["a", "b c"], "max_tokens": 2})
    assert request.prompt_tokens == 3
    choices = plan_choices(request, default_tokens=16)
    assert [len(choice.deltas) for choice in choices] == [2, 2]


def test_content_parts_count_only_text() -> None:
    parts = [
        {"type": "text", "text": "two words"},
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
    ]
    request = read_chat_request({"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert request.prompt_tokens == 2 + 3 + 3


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "user", "content": 3}]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": True},
        {"model": "m", "messages": [{"role": "user", "content": "[[mock:tokens=x]]"}]},
        {"model": "m", "messages": [{"role": "user", "content": "[[mock:bogus]]"}]},
    ],
)
def test_invalid_chat_requests_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        read_chat_request(body)


def test_embeddings_are_deterministic_unit_vectors() -> None:
    vector = embedding_vector("hello", 8)
    assert len(vector) == 8
    assert math.isclose(math.fsum(v * v for v in vector), 1.0)
    assert vector == embedding_vector("hello", 8)
    assert vector != embedding_vector("hullo", 8)
