"""``quotagate_upstream_in_flight`` counts a deployment's open requests, and only those."""

from __future__ import annotations

import threading
import time

import httpx
from e2e_clients import CHAT_MODEL, IssuedKey
from prometheus_client.parser import text_string_to_metric_families

from harness import Gateway


def in_flight(gw: Gateway) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "quotagate_upstream_in_flight":
            return sum(s.value for s in family.samples if s.labels["model"] == CHAT_MODEL)
    return 0.0


def until(gw: Gateway, value: float, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while in_flight(gw) != value:
        assert time.monotonic() < deadline, f"in flight: {in_flight(gw)}, wanted {value}"
        time.sleep(0.05)  # poll interval, not a wait for the outcome


def test_a_slow_answer_is_in_flight_until_it_ends(gateway: Gateway, pro_key: IssuedKey) -> None:
    until(gateway, 0)
    body = {
        "model": CHAT_MODEL, "stream": True,
        "messages": [{"role": "user", "content": "[[mock:ttft=3000]] slow"}],
    }  # fmt: skip
    headers = {"authorization": f"Bearer {pro_key.key}"}
    answers: list[int] = []

    def ask() -> None:
        with httpx.stream(
            "POST", gateway.base_url + "/v1/chat/completions", json=body, headers=headers,
            timeout=30,
        ) as response:  # fmt: skip
            response.read()
            answers.append(response.status_code)

    sender = threading.Thread(target=ask, daemon=True)
    sender.start()
    until(gateway, 1)  # waiting 3 s for its first token
    sender.join(timeout=30)
    assert answers == [200]
    until(gateway, 0)
