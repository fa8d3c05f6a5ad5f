import random

import pytest

from quotagate.mock_llm import MockSettings
from quotagate.mock_llm.directives import NO_DIRECTIVES, Directives, parse_directives
from quotagate.mock_llm.errors import InvalidRequest
from quotagate.mock_llm.faults import Fault, FaultPlan, choose_fault


def test_text_without_directives_parses_to_none() -> None:
    assert parse_directives("just a prompt [[not:mock]]") is NO_DIRECTIVES


def test_every_directive_parses() -> None:
    text = "[[mock:tokens=7]] [[mock:hang]] [[mock:drop]] [[mock:error=503]] [[mock:ttft=250]]"
    assert parse_directives(text) == Directives(
        tokens=7, hang=True, drop=True, error_status=503, ttft_ms=250.0
    )


def test_retry_after_alone_means_429() -> None:
    assert parse_directives("[[mock:retry-after=3]]") == Directives(
        error_status=429, retry_after="3"
    )
    assert parse_directives("[[mock:error=503]][[mock:retry-after=3]]").error_status == 503


@pytest.mark.parametrize(
    "text", ["[[mock:error=200]]", "[[mock:tokens=-1]]", "[[mock:ttft]]", "[[mock:nope]]"]
)
def test_bad_directives_are_400(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_directives(text)


def test_directives_win_over_rates_in_order_hang_error_drop() -> None:
    settings = MockSettings(error_rate=1.0)
    rng = random.Random(0)
    both = Directives(hang=True, error_status=502, drop=True)
    assert choose_fault(both, settings, rng).fault is Fault.HANG
    error = choose_fault(Directives(error_status=502, drop=True, retry_after="1"), settings, rng)
    assert error == FaultPlan(Fault.ERROR, 502, "1")
    assert choose_fault(Directives(drop=True), settings, rng).fault is Fault.DROP


@pytest.mark.parametrize(
    ("rates", "fault"),
    [
        ({}, Fault.NONE),
        ({"error_rate": 1.0}, Fault.ERROR),
        ({"hang_rate": 1.0}, Fault.HANG),
        ({"drop_rate": 1.0}, Fault.DROP),
    ],
)
def test_certain_rates_always_fire(rates: dict[str, float], fault: Fault) -> None:
    settings = MockSettings(**rates)  # type: ignore[arg-type]
    rng = random.Random(0)
    assert {choose_fault(NO_DIRECTIVES, settings, rng).fault for _ in range(50)} == {fault}


def test_rates_are_reproducible_from_the_seed() -> None:
    settings = MockSettings(error_rate=0.3, error_status=503)

    def run(seed: int) -> list[Fault]:
        rng = random.Random(seed)
        return [choose_fault(NO_DIRECTIVES, settings, rng).fault for _ in range(200)]

    assert run(1) == run(1)
    assert 30 < run(1).count(Fault.ERROR) < 90


def test_the_load_model_slows_down_past_capacity_and_fails_past_twice_it() -> None:
    from quotagate.mock_llm.faults import overloaded
    from quotagate.mock_llm.pacing import Pacing

    settings = MockSettings(ttft_ms=100, tokens_per_second=50, capacity=4)
    calm = Pacing.of(settings, Directives(), in_flight=4)
    assert (calm.first_s, calm.gap_s) == (0.1, 0.02)
    busy = Pacing.of(settings, Directives(), in_flight=8)
    assert (busy.first_s, busy.gap_s) == (0.2, 0.04)
    rng = random.Random(1)
    assert not any(overloaded(settings, 8, rng) for _ in range(200))
    refused = sum(overloaded(settings, 16, rng) for _ in range(2000))
    assert 800 < refused < 1200  # past 2x capacity: 1 - 8/16 of them
    assert not overloaded(MockSettings(capacity=0), 1000, rng)
