"""The spend-anomaly detector on a fake clock: quiet on steady spend, once on a spike."""

from __future__ import annotations

from quotagate.auth.principal import Principal
from quotagate.config.observability import SpendAnomalyConfig
from quotagate.observability.anomaly import Anomaly, SpendAnomalies

CONFIG = SpendAnomalyConfig(
    enabled=True, window=60, baseline=3600, threshold=4, min_spend=0.01, throttle=None
)
ACME = Principal("t1", "acme", "k1", "u1", "pro")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(
    detector: SpendAnomalies, clock: Clock, seconds: float, every: float, micros: int
) -> None:
    end = clock.now + seconds
    while clock.now < end:
        detector.observe(ACME, micros)
        clock.now += every


def detector() -> tuple[SpendAnomalies, Clock, list[Anomaly]]:
    clock, found = Clock(), []
    return SpendAnomalies(CONFIG, found.append, clock), clock, found


def test_steady_spend_never_alerts_even_when_it_is_large() -> None:
    d, clock, found = detector()
    spend(d, clock, seconds=4 * 3600, every=1.0, micros=50_000)  # $180 an hour, steadily
    assert found == []


def test_a_spike_alerts_once_with_its_size_and_rearms_after_calm() -> None:
    d, clock, found = detector()
    spend(d, clock, seconds=2 * 3600, every=2.0, micros=1_000)  # $1.80 an hour
    assert found == []
    spend(d, clock, seconds=120, every=0.1, micros=1_000)  # 20x, for two minutes
    assert len(found) == 1
    alert = found[0]
    assert (alert.tenant_name, alert.plan) == ("acme", "pro")
    assert alert.ratio > 4 and alert.recent_per_hour > 4 * alert.baseline_per_hour
    assert 1.5 < alert.baseline_per_hour < 6  # the steady $1.80/h, nudged up by the spike
    spend(d, clock, seconds=600, every=0.1, micros=1_000)  # the spike goes on: no repeat
    assert len(found) == 1
    spend(d, clock, seconds=3600, every=2.0, micros=1_000)  # back to normal: re-armed
    spend(d, clock, seconds=120, every=0.05, micros=1_000)
    assert len(found) == 2


def test_no_judgement_before_the_warmup_nor_below_min_spend() -> None:
    d, clock, found = detector()
    spend(d, clock, seconds=600, every=0.01, micros=1_000)  # a new tenant bursting at once
    assert found == []  # no baseline of its own yet (warmup = baseline = 1 h)
    tiny = SpendAnomalies(CONFIG, found.append, clock)
    spend(tiny, clock, seconds=2 * 3600, every=60.0, micros=1)
    spend(tiny, clock, seconds=120, every=1.0, micros=1)  # 60x, but a few micro-dollars
    assert found == []
