"""The spike experiment, bounded (tests/spike.py): enterprise is served (>= 99.95%),
free traffic is shed (503) or limited (429), the one-address flood is refused before
authentication, and the upstream never has more in flight than its capacity. Latency
is printed here and recorded by ``bench/flood.py``, not asserted (STYLE: performance
is measured, not asserted by the clock)."""

from __future__ import annotations

from pathlib import Path

from spike import CAPACITY, run_spike, summary


def test_a_flood_sheds_free_traffic_and_serves_enterprise(tmp_path: Path) -> None:
    spike = run_spike(tmp_path, 5.0)
    print(summary("enterprise alone", spike.unloaded))
    for name, outcome in spike.loaded.items():
        print(summary(name, outcome))
    assert spike.unloaded.success == 1.0, summary("enterprise alone", spike.unloaded)
    ent = spike.loaded["enterprise"]
    assert ent.sent >= 45 and ent.success >= 0.9995, summary("enterprise", ent)
    free = spike.loaded["free"]
    assert free.statuses[503] + free.statuses[429] > free.sent / 2, summary("free", free)
    assert free.codes["overloaded"] > 0  # shed by the admission queue
    one = spike.loaded["one address"]
    # The guard lets 50 a second through (to a 401), and refuses the rest unauthenticated.
    assert one.statuses[401] <= 50 * 6, summary("one address", one)
    assert one.codes["ip_rate_limited"] == one.sent - one.statuses[401]
    assert spike.preauth_refused >= one.codes["ip_rate_limited"]
    assert spike.peak_in_flight <= CAPACITY
