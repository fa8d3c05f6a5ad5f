"""Traffic shaping against a real mock with a load model: the admission queue serves
enterprise first and sheds free traffic, batch waits and completes, the adaptive limit
falls when the upstream slows down and recovers when it eases, an address flood is
refused before authentication, the gateway-wide in-flight cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_clients import KeyIssuer

from harness import Gateway, Process, policy, start_mock
from metrics_text import scrape, total

MODEL = "gpt-3.5-turbo"


@dataclass
class Setup:
    mock: Process
    gateway: Gateway
    keys: KeyIssuer

    def stop(self) -> None:
        self.gateway.stop()
        self.mock.stop()


def start(
    tmp: Path,
    deployment: dict[str, Any],
    shaping: dict[str, Any],
    free_limits: list[dict[str, Any]] | None = None,
    **mock: float,
) -> Setup:
    upstream = start_mock(tmp)
    if mock:
        faults(upstream, **mock)
    doc = policy(upstream.base_url + "/v1")
    signal = deployment.get("health_signal")
    if signal is not None:  # the mock's own load report
        deployment = {
            **deployment,
            "health_signal": {**signal, "url": f"{upstream.base_url}/_mock/load"},
        }
    doc["models"][MODEL]["deployments"][0].update({"name": "gpu-1", **deployment})
    doc["plans"]["free"]["limits"] = free_limits or []
    doc["plans"]["free"]["priority"] = 0
    doc["plans"]["enterprise"]["limits"] = []
    doc["plans"]["enterprise"]["priority"] = 10
    doc["shaping"] = shaping
    gateway = Gateway(tmp / "gw", doc)
    try:
        gateway.start()
    except Exception:
        upstream.stop()
        raise
    return Setup(upstream, gateway, KeyIssuer(gateway))


def faults(mock: Process, **settings: float) -> None:
    httpx.post(f"{mock.base_url}/_mock/faults", json=settings, timeout=5).raise_for_status()


def load(mock: Process) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{mock.base_url}/_mock/load", timeout=5).json()
    return body


def chat(gw: Gateway, key: str, text: str = "hi", **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=60,
    )


def in_parallel(calls: list[Callable[[], httpx.Response]], stagger: float = 0.0) -> list[Any]:
    """Run the calls on threads; each result is (seconds from the start, response)."""
    results: list[Any] = [None] * len(calls)
    started = time.monotonic()

    def run(i: int) -> None:
        response = calls[i]()
        results[i] = (time.monotonic() - started, response)

    threads = []
    for i in range(len(calls)):
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
        if stagger:
            time.sleep(stagger)  # an arrival order, not a wait for an outcome
    for t in threads:
        t.join(60)
    return results


@pytest.fixture
def two_slots(tmp_path: Path) -> Iterator[Setup]:
    """A deployment that takes 2 requests at once; each answer takes 0.4s."""
    setup = start(
        tmp_path, {"max_concurrency": 2},
        {"queue": {"max_length": 50, "max_wait": {"interactive": "5s", "batch": "30s"}}},
        ttft_ms=400, capacity=2,
    )  # fmt: skip
    yield setup
    setup.stop()


def test_enterprise_gets_the_next_slots_and_the_upstream_stays_within_capacity(
    two_slots: Setup,
) -> None:
    gw = two_slots.gateway
    free, ent = two_slots.keys.issue("free").key, two_slots.keys.issue("enterprise").key
    calls = [lambda: chat(gw, free) for _ in range(6)] + [lambda: chat(gw, ent) for _ in range(2)]
    results = in_parallel(calls, stagger=0.02)  # the free ones queue first
    assert all(r.status_code == 200 for _, r in results), [r.text for _, r in results]
    free_done = sorted(t for t, _ in results[:6])
    ent_done = max(t for t, _ in results[6:])
    # The two slots free at ~0.4s go to enterprise, not to the free requests queued
    # before them: enterprise is done before the third free request.
    assert ent_done < free_done[2], (ent_done, free_done)
    assert load(two_slots.mock)["peak_in_flight"] <= 2  # never past its capacity
    upstream = two_slots.mock.base_url
    last = httpx.get(f"{upstream}/_mock/last-request", timeout=5).json()["headers"]
    assert (
        last["x-quotagate-priority"] in ("0", "10") and last["x-quotagate-class"] == "interactive"
    )


def test_interactive_requests_are_shed_after_max_wait_and_batch_ones_wait(
    tmp_path: Path,
) -> None:
    setup = start(
        tmp_path, {"max_concurrency": 1},
        {"queue": {"max_wait": {"interactive": "300ms", "batch": "30s"}}},
        ttft_ms=500,
    )  # fmt: skip
    try:
        gw, free = setup.gateway, setup.keys.issue("free").key
        results = in_parallel([lambda: chat(gw, free) for _ in range(3)], stagger=0.02)
        statuses = sorted(r.status_code for _, r in results)
        assert statuses == [200, 503, 503], statuses
        shed = next(r for _, r in results if r.status_code == 503)
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "overloaded"
        batch = {"x-quotagate-class": "batch"}
        results = in_parallel([lambda: chat(gw, free, **batch) for _ in range(4)])
        assert [r.status_code for _, r in results] == [200] * 4  # waited their turn
        assert max(t for t, _ in results) >= 1.5  # one at a time, 0.5s each
        bad = chat(gw, free, **{"x-quotagate-class": "urgent"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-quotagate-class"
        assert total(scrape(gw.admin_url), "quotagate_shed_total", reason="max_wait") == 2
    finally:
        setup.stop()


def limit_of(gw: Gateway) -> float:
    detail = httpx.get(gw.base_url + "/readyz", timeout=5).json()["deployments"][MODEL]["gpu-1"]
    return float(detail["limit"])


SIGNALS = {
    # Time to first token: 8 at once on a capacity of 2 is 4x 100ms, above 250ms.
    "ttft": ({}, "250ms", 2),
    # The upstream's own report alone: memory pressure (in flight / capacity 5) above
    # 0.5; 8 at once on 5 is no refusal, 160ms to first token, far below its 30s target.
    "health_signal": ({"health_signal": {"field": "memory_pressure", "max": 0.5}}, "30s", 5),
}


@pytest.mark.parametrize("signal", list(SIGNALS))
def test_the_adaptive_limit_falls_when_the_upstream_slows_and_recovers(
    tmp_path: Path, signal: str
) -> None:
    extra, target_ttft, capacity = SIGNALS[signal]
    setup = start(
        tmp_path,
        {"max_concurrency": 8, **extra},
        {
            "adaptive": {"min": 1, "max": 8, "initial": 8, "interval": "200ms",
                         "target_ttft": target_ttft, "target_tpot": "1s"},
            "queue": {"max_wait": {"interactive": "10s"}},
        },
        ttft_ms=100, capacity=capacity,
    )  # fmt: skip
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        gw, ent = setup.gateway, setup.keys.issue("enterprise").key
        assert limit_of(gw) == 8

        def stream_forever() -> None:
            body = {"model": MODEL, "stream": True, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            while not stop.is_set():
                with httpx.stream(
                    "POST",
                    gw.base_url + "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {ent}"},
                    timeout=30,
                ) as r:
                    r.read()  # fmt: skip

        threads = [threading.Thread(target=stream_forever) for _ in range(8)]
        for t in threads:
            t.start()
        # 8 at once on a capacity of 2: time to first token 4x 100ms, above 250ms.
        deadline = time.monotonic() + 10
        # The value that ended the wait: a second read could see it rising again.
        while (fell_to := limit_of(gw)) > 3:
            assert time.monotonic() < deadline, f"the limit stayed at {fell_to}"
            time.sleep(0.1)  # poll interval while traffic runs
        faults(setup.mock, capacity=100)  # the upstream eases
        deadline = time.monotonic() + 10
        while limit_of(gw) < 7:
            assert time.monotonic() < deadline, f"the limit stayed at {limit_of(gw)}"
            time.sleep(0.1)  # poll interval while traffic runs
        assert fell_to <= 3
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        setup.stop()


def test_an_address_flood_is_refused_before_authentication(tmp_path: Path) -> None:
    setup = start(tmp_path, {}, {"ip_guard": {"requests": 5, "per": "1s", "burst": 5}})
    try:
        gw = setup.gateway
        started = time.monotonic()
        responses = [chat(gw, "qg-not-a-real-key") for _ in range(40)]
        answers = [r.status_code for r in responses]
        let_through = 5 + 5 * (time.monotonic() - started)  # the burst, then 5 a second
        assert answers.count(401) <= let_through + 1, answers
        assert answers.count(429) == 40 - answers.count(401) >= 20, answers
        # One of those refusals (not a later request: the bucket refills meanwhile).
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "ip_rate_limited"
        assert "retry-after" in refused.headers
        metrics = scrape(gw.admin_url)
        assert total(metrics, "quotagate_preauth_refused_total") == answers.count(429)
        # Authentication ran only for the requests the guard let through.
        denied = total(metrics, "quotagate_requests_total", decision="denied_auth")
        assert denied == answers.count(401)
    finally:
        setup.stop()


def test_the_gateway_wide_in_flight_cap_sheds_at_once(tmp_path: Path) -> None:
    setup = start(tmp_path, {}, {"max_in_flight": 2}, ttft_ms=500)
    try:
        gw, ent = setup.gateway, setup.keys.issue("enterprise").key
        results = in_parallel([lambda: chat(gw, ent) for _ in range(4)])
        statuses = sorted(r.status_code for _, r in results)
        assert statuses == [200, 200, 503, 503], statuses
        fast = [t for t, r in results if r.status_code == 503]
        assert max(fast) < 0.4  # refused at once, not after waiting
    finally:
        setup.stop()


def test_batch_traffic_has_limits_of_its_own(tmp_path: Path) -> None:
    batch_only = [{"scope": "key", "requests": 2, "per": "1m", "classes": ["batch"]}]
    setup = start(tmp_path, {}, {}, free_limits=batch_only)
    try:
        gw, free = setup.gateway, setup.keys.issue("free").key
        batch = [chat(gw, free, **{"x-quotagate-class": "batch"}).status_code for _ in range(3)]
        assert batch == [200, 200, 429]
        assert [chat(gw, free).status_code for _ in range(3)] == [200, 200, 200]
    finally:
        setup.stop()


def test_a_degrade_plan_takes_a_fallback_model_instead_of_waiting(tmp_path: Path) -> None:
    setup = start(tmp_path, {"max_concurrency": 1}, {}, ttft_ms=600)
    try:
        gw = setup.gateway
        gw.stop()
        gw.doc["plans"]["free"].update(
            {"models": ["*"], "on_overload": "degrade", "fallbacks": {MODEL: ["gpt-4"]}}
        )
        gw.config.write_text(yaml.safe_dump(gw.doc))
        gw.start()
        free = setup.keys.issue("free").key
        results = in_parallel([lambda: chat(gw, free) for _ in range(2)], stagger=0.1)
        first, second = (r for _, r in results)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-quotagate-model"] == MODEL
        assert second.headers["x-quotagate-model"] == "gpt-4"  # did not wait for the slot
        assert second.headers["x-quotagate-fallback"] == f"{MODEL} -> gpt-4; reason=overload"
        assert results[1][0] < 1.0  # beside the first (~0.7s), not after it (~1.2s)
    finally:
        setup.stop()
