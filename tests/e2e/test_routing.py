"""Routing and resilience against real mock upstreams in two regions and a cheaper
fallback model: region preference and spill-over, a deployment killed mid-traffic,
a hanging deployment's circuit, upstream 429s, the retry budget, fallback billing."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from e2e_clients import KeyIssuer, assert_sdk_error, ledger_row, messages, sdk

from harness import Gateway, Process, policy, start_mock
from metrics_text import scrape, total

GPT4, CHEAP = "gpt-4", "gpt-3.5-turbo"
REDIS_URL = "redis://127.0.0.1:6379/0"
PRICES = {GPT4: (30_000_000, 60_000_000), CHEAP: (500_000, 1_500_000)}  # µ per 1M tokens


@dataclass
class Fleet:
    eu: Process  # gpt-4, eu-west (this gateway's region)
    us: Process  # gpt-4, us-east
    cheap: Process  # gpt-3.5-turbo, the fallback
    gateway: Gateway
    key: str

    def client(self) -> openai.OpenAI:
        return sdk(self.gateway, self.key)  # the SDK's own retries off

    def stop(self) -> None:
        self.gateway.stop()
        for mock in (self.eu, self.us, self.cheap):
            mock.stop()


def faults(mock: Process, **settings: float) -> None:
    httpx.post(f"{mock.base_url}/_mock/faults", json=settings, timeout=5).raise_for_status()


def gpt4_fails_once(fleet: Fleet) -> None:
    """Both gpt-4 deployments answer their next request with a 500: a request for gpt-4
    is admitted as gpt-4 and served by its fallback on a retry."""
    for mock in (fleet.eu, fleet.us):
        faults(mock, fail_next=1, error_status=500)


def seen(mock: Process) -> int:
    return int(httpx.get(f"{mock.base_url}/_mock/stats", timeout=5).json()["requests"])


def readyz(fleet: Fleet) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(fleet.gateway.base_url + "/readyz", timeout=5).json()
    return body


def circuit(fleet: Fleet, model: str, name: str) -> str:
    return str(readyz(fleet)["deployments"][model][name]["circuit"])


def start_fleet(
    tmp: Path,
    eu_extra: dict[str, Any] | None = None,
    plan: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
    **routing: Any,
) -> Fleet:
    eu, us, cheap = (start_mock(tmp) for _ in range(3))
    doc = policy(cheap.base_url + "/v1")
    doc["models"][GPT4]["deployments"] = [
        {"url": eu.base_url + "/v1", "region": "eu-west", "name": "eu-1",
         "timeouts": {"first_byte": "300ms", "idle": "1500ms", "total": "5s"}},
        {"url": us.base_url + "/v1", "region": "us-east", "name": "us-1",
         "timeouts": {"first_byte": "300ms", "idle": "1500ms", "total": "5s"}},
    ]  # fmt: skip
    doc["models"][GPT4]["deployments"][0].update(eu_extra or {})
    doc["models"][GPT4]["fallback"] = [CHEAP]
    doc["models"][CHEAP]["deployments"][0]["name"] = "cheap-1"
    doc["plans"]["enterprise"]["limits"] = []  # the traffic here is about the upstreams
    doc["plans"]["enterprise"].update(plan or {})
    if store is not None:
        doc["store"] = store
    doc["routing"] = {
        "region": "eu-west",
        "nearest": {"eu-west": ["us-east"]},
        "breaker": {"consecutive_failures": 3, "open_for": "1s", "min_requests": 1000},
        "retries": {"attempts": 3, "budget": 1.0, "min_per_second": 50},
        **routing,
    }
    gateway = Gateway(tmp / "gw", doc)
    try:
        gateway.start()
        key = KeyIssuer(gateway).issue("enterprise").key
    except Exception:
        gateway.stop()
        for mock in (eu, us, cheap):
            mock.stop()
        raise
    return Fleet(eu, us, cheap, gateway, key)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = start_fleet(tmp_path)
    yield started
    started.stop()


def served_by(client: openai.OpenAI, model: str = GPT4, **extra: Any) -> tuple[str, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages("hello"), **extra
    )
    return raw.headers["x-quotagate-deployment"], raw


def test_traffic_stays_in_the_clients_region_and_spills_over_when_it_is_down(
    fleet: Fleet,
) -> None:
    with fleet.client() as client:
        # No region header: the gateway's own (eu-west).
        assert {served_by(client)[0] for _ in range(20)} == {"eu-1"}
        # The client names its region.
        us = {"x-quotagate-region": "us-east"}
        assert {served_by(client, extra_headers=us)[0] for _ in range(20)} == {"us-1"}
        # A region the model has no deployment in: the gateway's own.
        mars = {"x-quotagate-region": "mars-1"}
        assert {served_by(client, extra_headers=mars)[0] for _ in range(5)} == {"eu-1"}
        fleet.eu.stop()
        # eu-west is down: the next region, with no error seen by the client.
        names = [served_by(client)[0] for _ in range(20)]
    assert set(names) == {"us-1"}, names
    assert readyz(fleet)["deployments"][GPT4]["eu-1"]["circuit"] == "open"


def test_killing_a_deployment_mid_traffic_loses_no_request(fleet: Fleet) -> None:
    outcomes: list[str] = []
    served: Counter[str] = Counter()
    enough = threading.Event()
    stop = threading.Event()

    def traffic() -> None:
        with fleet.client() as client:
            while not stop.is_set():
                try:
                    name, _ = served_by(client, extra_headers={"x-quotagate-region": "eu-west"})
                    served[name] += 1
                    outcomes.append("ok")
                except openai.APIError as exc:
                    outcomes.append(f"error: {exc}")
                if len(outcomes) >= 60:
                    enough.set()

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(30), "no traffic"
    fleet.eu.stop()  # mid-traffic: requests in flight to it fail over to us-east
    before = len(outcomes)
    deadline = time.monotonic() + 30
    while len(outcomes) < before + 300 and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval while the traffic threads run
    stop.set()
    for t in threads:
        t.join(30)
    failures = [o for o in outcomes if o != "ok"]
    assert len(outcomes) >= before + 300, len(outcomes)
    assert len(failures) / len(outcomes) <= 0.001, failures[:5]
    assert served["us-1"] >= 300, served


def test_a_hanging_deployment_opens_its_circuit_and_closes_after_recovery(fleet: Fleet) -> None:
    faults(fleet.eu, hang_rate=1.0)
    with fleet.client() as client:
        # Every request still succeeds (retried on us-east before any byte was sent) ...
        names = [served_by(client)[0] for _ in range(3)]
        assert names == ["us-1"] * 3
        # ... and 3 timeouts in a row (the configured count) opened eu-1's circuit.
        assert circuit(fleet, GPT4, "eu-1") == "open"
        hung = seen(fleet.eu)
        assert [served_by(client)[0] for _ in range(5)] == ["us-1"] * 5
        assert seen(fleet.eu) == hung, "an open circuit got traffic"
        faults(fleet.eu, hang_rate=0.0)
        # After open_for (1s) a probe goes through, succeeds, and the circuit closes.
        deadline = time.monotonic() + 10
        while served_by(client)[0] != "eu-1":
            assert time.monotonic() < deadline, "eu-1 never came back"
            time.sleep(0.1)  # poll interval until open_for has passed
    assert circuit(fleet, GPT4, "eu-1") == "closed"
    metrics = httpx.get(fleet.gateway.admin_url + "/metrics", timeout=5).text
    assert 'quotagate_deployment_circuit_state{deployment="eu-1",model="gpt-4"} 0.0' in metrics
    opened = (
        "quotagate_deployment_circuit_transitions_total"
        '{deployment="eu-1",model="gpt-4",state="open"} 1.0'
    )
    assert opened in metrics
    log = fleet.gateway.process.log.read_text() if fleet.gateway.process else ""
    assert "deployment eu-1 of gpt-4: circuit closed -> open" in log


def test_an_upstream_429_retry_after_is_waited_for_on_the_only_deployment(fleet: Fleet) -> None:
    faults(fleet.cheap, fail_next=1, error_status=429, retry_after=1)
    before = seen(fleet.cheap)
    with fleet.client() as client:
        started = time.monotonic()
        name, raw = served_by(client, CHEAP)
        waited = time.monotonic() - started
    assert raw.http_response.status_code == 200 and name == "cheap-1"
    assert seen(fleet.cheap) == before + 2  # the 429, then the retry
    assert waited >= 1.0, waited  # the upstream's retry-after was honoured


def test_a_retry_after_beyond_the_limit_is_passed_to_the_client(fleet: Fleet) -> None:
    faults(fleet.cheap, fail_next=1, error_status=429, retry_after=30)
    before = seen(fleet.cheap)
    with fleet.client() as client, pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=CHEAP, messages=messages("hello"))
    assert err.value.response.headers["retry-after"] == "30"
    assert seen(fleet.cheap) == before + 1  # not retried: 30s is past max_retry_after


def test_a_429_moves_the_request_to_another_deployment_at_once(fleet: Fleet) -> None:
    faults(fleet.eu, fail_next=1, error_status=429, retry_after=20)
    with fleet.client() as client:
        started = time.monotonic()
        name, _ = served_by(client)
        assert name == "us-1" and time.monotonic() - started < 1.0
        # eu-1 is left alone while its retry-after runs, without opening its circuit.
        assert [served_by(client)[0] for _ in range(5)] == ["us-1"] * 5
    detail = readyz(fleet)["deployments"][GPT4]["eu-1"]
    assert detail["throttled"] is True and detail["circuit"] == "closed"


def test_a_json_body_cut_before_reaching_the_client_is_retried(fleet: Fleet) -> None:
    faults(fleet.eu, drop_rate=1.0)
    with fleet.client() as client:
        name, raw = served_by(client)
    assert name == "us-1" and raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content


def test_max_concurrency_is_a_hard_cap_that_spills_over(tmp_path: Path) -> None:
    capped = {"max_concurrency": 2, "timeouts": {"first_byte": "5s", "total": "10s"}}
    fleet = start_fleet(tmp_path, eu_extra=capped)
    gateway, key = fleet.gateway, fleet.key
    try:
        faults(fleet.eu, ttft_ms=1500)  # each eu request holds its slot for 1.5s
        served: list[str] = []
        barrier = threading.Barrier(6)

        def one() -> None:
            with sdk(gateway, key) as client:
                barrier.wait()
                served.append(served_by(client, max_tokens=4, stream=False)[0])

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        fleet.stop()
    assert len(served) == 6  # none refused: the rest spilled over to us-east
    assert Counter(served)["eu-1"] == 2, served


def test_no_retry_once_the_stream_has_started(fleet: Fleet) -> None:
    before = seen(fleet.eu) + seen(fleet.us) + seen(fleet.cheap)
    with fleet.client() as client:
        stream = client.chat.completions.create(
            model=GPT4, messages=messages("[[mock:drop]] [[mock:tokens=20]]"), stream=True
        )
        received = []
        with pytest.raises(openai.APIError) as err:
            for chunk in stream:
                received.append(chunk)
    assert received, "nothing was relayed before the cut"
    assert err.value.body is not None and err.value.body["code"] == "upstream_error"
    assert seen(fleet.eu) + seen(fleet.us) + seen(fleet.cheap) == before + 1


def stream_text(client: openai.OpenAI, tokens: int) -> str:
    stream = client.chat.completions.create(
        model=GPT4, messages=messages(f"[[mock:tokens={tokens}]] slow"), stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_gaps_between_chunks_are_bounded_by_idle_not_first_byte(fleet: Fleet) -> None:
    # 0.8s between tokens: above first_byte (300ms), within idle (1.5s).
    faults(fleet.eu, tokens_per_second=1.25)
    with fleet.client() as client:
        assert stream_text(client, 3)
        # 2.5s between tokens: past idle.
        faults(fleet.eu, tokens_per_second=0.4)
        started = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            stream_text(client, 3)
        elapsed = time.monotonic() - started
    assert err.value.body is not None and err.value.body["code"] == "upstream_timeout"
    assert 1.4 <= elapsed < 2.4, elapsed  # the idle gap ended it, not the 5s total
    faults(fleet.eu, tokens_per_second=0.0)


def test_retries_never_exceed_the_retry_budget(tmp_path: Path) -> None:
    fleet = start_fleet(
        tmp_path, retries={"attempts": 3, "budget": 0.1, "min_per_second": 0},
        breaker={"consecutive_failures": 1000, "min_requests": 1000},
    )  # fmt: skip
    try:
        for mock in (fleet.eu, fleet.us, fleet.cheap):
            faults(mock, error_rate=1.0, error_status=500)
        sent = 60
        with fleet.client() as client:
            for _ in range(sent):
                with pytest.raises(openai.InternalServerError) as err:
                    client.chat.completions.create(model=GPT4, messages=messages("hello"))
                assert_sdk_error(err.value, 502, "upstream_error")
        upstream = seen(fleet.eu) + seen(fleet.us) + seen(fleet.cheap)
        retries = upstream - sent
        assert 1 <= retries <= 0.1 * sent, retries  # some retried, never past 10%
        metrics = scrape(fleet.gateway.admin_url)  # every decision is counted
        assert total(metrics, "quotagate_upstream_retries_total", outcome="retried") == retries
        assert total(metrics, "quotagate_upstream_retries_total", outcome="budget") >= 1
    finally:
        fleet.stop()


def test_an_outage_falls_back_to_the_cheaper_model_billed_at_its_price(fleet: Fleet) -> None:
    fleet.eu.stop()
    fleet.us.stop()
    with fleet.client() as client:
        for _ in range(5):  # the first ones fail over before the circuits are open
            raw = client.chat.completions.with_raw_response.create(
                model=GPT4, messages=messages("[[mock:tokens=7]] hi")
            )
            assert raw.http_response.status_code == 200
            assert raw.headers["x-quotagate-model"] == CHEAP
            assert raw.headers["x-quotagate-deployment"] == "cheap-1"
            assert raw.headers["x-quotagate-fallback"].startswith(f"{GPT4} -> {CHEAP}; reason=")
            answer = raw.parse()
            assert answer.model == CHEAP
    usage = answer.usage
    assert usage is not None
    row = ledger_row(fleet.gateway, raw.headers["x-request-id"])
    inp, out = PRICES[CHEAP]
    expected = -(-(usage.prompt_tokens * inp + usage.completion_tokens * out) // 1_000_000)
    assert (row["model"], row["cost_micros"]) == (CHEAP, expected)
    assert row["cost_micros"] < usage.prompt_tokens * PRICES[GPT4][0] // 1_000_000


def per_model_quotas(gpt4: int, cheap: int) -> dict[str, Any]:
    return {
        "quotas": [
            {"scope": "tenant", "model": GPT4, "tokens": gpt4, "per": "day"},
            {"scope": "tenant", "model": CHEAP, "tokens": cheap, "per": "day"},
        ]
    }


def remaining_tokens(raw: Any) -> int:
    return int(raw.headers["x-quotagate-quota-remaining-tokens"])


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "memory":
        yield {"url": "memory://"}
        return
    prefix = f"qgtest:{secrets.token_hex(6)}:"
    yield {"url": REDIS_URL, "prefix": prefix}
    with redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)


def test_a_fallback_on_a_retry_is_counted_by_the_fallback_models_quota(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    """Both gpt-4 deployments fail once, so the request is served by gpt-3.5-turbo on a
    retry, after the limits admitted it as gpt-4: gpt-4's per-model quota gets it back
    and gpt-3.5-turbo's is charged what was used; the answer's quota headers speak of
    gpt-3.5-turbo's quota."""
    fleet = start_fleet(tmp_path, plan=per_model_quotas(100_000, 60_000), store=store)
    ask = {"messages": messages("[[mock:tokens=7]] hi"), "max_tokens": 50}
    try:
        with fleet.client() as client:
            gpt4_fails_once(fleet)
            fell = client.chat.completions.with_raw_response.create(model=GPT4, **ask)
            assert fell.headers["x-quotagate-model"] == CHEAP
            assert fell.headers["x-quotagate-fallback"] == f"{GPT4} -> {CHEAP}; reason=outage"
            usage = fell.parse().usage
            assert usage is not None
            asked = client.chat.completions.with_raw_response.create(model=GPT4, **ask)
            cheap = client.chat.completions.with_raw_response.create(model=CHEAP, **ask)
        assert asked.headers["x-quotagate-model"] == GPT4
        assert cheap.headers["x-quotagate-model"] == CHEAP
        row = ledger_row(fleet.gateway, fell.headers["x-request-id"])
        assert (row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
            CHEAP, usage.prompt_tokens, usage.completion_tokens,
        )  # fmt: skip
        # What remains counts each request's own reservation (the ledger has it).
        assert fell.headers["x-quotagate-quota-limit-tokens"] == "60000"
        assert remaining_tokens(fell) == 60_000 - row["reserved_tokens"]
        assert fell.headers.get_list("x-quotagate-quota-limit-tokens") == ["60000"]
        reserved = ledger_row(fleet.gateway, asked.headers["x-request-id"])["reserved_tokens"]
        assert remaining_tokens(asked) == 100_000 - reserved  # the fallback was refunded
        reserved = ledger_row(fleet.gateway, cheap.headers["x-request-id"])["reserved_tokens"]
        assert remaining_tokens(cheap) == 60_000 - usage.total_tokens - reserved
    finally:
        fleet.stop()


def test_a_fallback_on_a_retry_moves_a_limit_counted_by_model(tmp_path: Path) -> None:
    """A rate limit per key and model (2 a minute): the request gpt-3.5-turbo served in
    gpt-4's place leaves gpt-4 both of its requests and gpt-3.5-turbo one."""
    limits = {"limits": [{"scope": ["key", "model"], "requests": 2, "per": "1m"}]}
    fleet = start_fleet(tmp_path, plan=limits)
    try:
        with fleet.client() as client:
            gpt4_fails_once(fleet)
            fell = client.chat.completions.with_raw_response.create(
                model=GPT4, messages=messages("hi")
            )
            assert fell.headers["x-quotagate-model"] == CHEAP
            for model, allowed in ((GPT4, 2), (CHEAP, 1)):
                for _ in range(allowed):
                    served_by(client, model)
                with pytest.raises(openai.RateLimitError):
                    served_by(client, model)
    finally:
        fleet.stop()


def test_a_fallback_on_a_retry_answers_with_the_fallbacks_rate_limit_headers(
    tmp_path: Path,
) -> None:
    """2 a minute per key and model; gpt-3.5-turbo has used one. A gpt-4 request it
    serves on a retry is told gpt-3.5-turbo's state (none left), not gpt-4's (one)."""
    limits = {"limits": [{"scope": ["key", "model"], "requests": 2, "per": "1m"}]}
    fleet = start_fleet(tmp_path, plan=limits)
    try:
        with fleet.client() as client:
            served_by(client, CHEAP)
            gpt4_fails_once(fleet)
            fell = client.chat.completions.with_raw_response.create(
                model=GPT4, messages=messages("hi")
            )
        assert fell.headers["x-quotagate-model"] == CHEAP
        assert fell.headers.get_list("x-ratelimit-remaining-requests") == ["0"]
        assert ";r=0;" in fell.headers["ratelimit"]
    finally:
        fleet.stop()


def test_a_fallback_its_own_quota_refuses_is_not_taken(tmp_path: Path) -> None:
    """gpt-3.5-turbo's quota cannot take the request (30 tokens a day, the request may
    use ~60): when gpt-4 fails, the answer is gpt-4's failure, and gpt-3.5-turbo is
    never called."""
    fleet = start_fleet(tmp_path, plan=per_model_quotas(100_000, 30))
    try:
        with fleet.client() as client:
            gpt4_fails_once(fleet)
            with pytest.raises(openai.APIStatusError) as raised:
                client.chat.completions.create(model=GPT4, messages=messages("hi"), max_tokens=50)
        assert raised.value.status_code == 502
        assert seen(fleet.cheap) == 0
        refusals = scrape(fleet.gateway.admin_url)
        assert total(refusals, "quotagate_fallback_refusals_total", model=GPT4) == 1
    finally:
        fleet.stop()


def test_a_fallback_its_per_model_rate_limit_just_refused_is_not_taken(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    """gpt-3.5-turbo's per-model limit (1 a minute) has just refused a request: on
    Redis that refusal is cached with the plan's two limits, and the fallback's move
    asks about the per-model one alone. When gpt-4 then fails, the answer is gpt-4's
    failure (not a gateway error), and gpt-3.5-turbo is not called again."""
    limits = {
        "limits": [
            {"scope": "key", "requests": 1000, "per": "1m"},
            {"scope": ["key", "model"], "requests": 1, "per": "1m"},
        ]
    }
    fleet = start_fleet(tmp_path, plan=limits, store=store)
    try:
        with fleet.client() as client:
            served_by(client, CHEAP)
            with pytest.raises(openai.RateLimitError):
                served_by(client, CHEAP)
            gpt4_fails_once(fleet)
            with pytest.raises(openai.APIStatusError) as raised:
                client.chat.completions.create(model=GPT4, messages=messages("hi"))
        assert raised.value.status_code == 502
        assert seen(fleet.cheap) == 1
        refusals = scrape(fleet.gateway.admin_url)
        assert total(refusals, "quotagate_fallback_refusals_total", model=GPT4) == 1
    finally:
        fleet.stop()


def test_without_any_deployment_the_answer_is_a_503_with_retry_after(fleet: Fleet) -> None:
    for mock in (fleet.eu, fleet.us, fleet.cheap):
        mock.stop()
    with fleet.client() as client:
        for _ in range(4):  # fail until every circuit is open
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model=GPT4, messages=messages("hello"))
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=GPT4, messages=messages("hello"))
    assert_sdk_error(err.value, 503, "no_healthy_deployment")
    assert err.value.response.headers["retry-after"] == "1"
