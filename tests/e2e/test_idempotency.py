"""``Idempotency-Key``: a retry gets the first answer (JSON or a whole stream) and is
charged once; the same key with another body is 422; a retry while the first is in
flight is 409; an answer too long to keep is not replayed but served again."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

import httpx
from e2e_clients import CHAT_MODEL, IssuedKey, KeyIssuer

from harness import Gateway

CHAT = "/v1/chat/completions"


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def post(
    gw: Gateway, key: IssuedKey, idem: str, payload: dict[str, Any], path: str = CHAT
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key.key}", "idempotency-key": idem}
    return httpx.post(gw.base_url + path, json=payload, headers=headers, timeout=60)


def ledger_rows(gw: Gateway, key: IssuedKey, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    """The key's ledger rows, once there are ``n`` (the writer batches)."""
    deadline = time.monotonic() + within
    while True:
        with closing(sqlite3.connect(gw.tmp / "qg.db", timeout=5)) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(
                "SELECT * FROM qg_ledger WHERE key_id = ? ORDER BY created_at", (key.key_id,)
            )]  # fmt: skip
        if len(rows) >= n:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} ledger rows, wanted {n}"
        time.sleep(0.05)  # poll interval, not a wait for the outcome


def test_a_retried_answer_is_replayed_and_charged_once(gateway: Gateway, keys: KeyIssuer) -> None:
    key, idem = keys.issue("pro"), secrets.token_hex(8)
    first = post(gateway, key, idem, body("replay me"))
    again = post(gateway, key, idem, body("replay me"))
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    charged, replayed = ledger_rows(gateway, key, 2)
    assert charged["status"] == "ok" and charged["prompt_tokens"] > 0
    assert (replayed["status"], replayed["prompt_tokens"], replayed["cost_micros"]) == (
        "replayed", 0, 0,
    )  # fmt: skip


def test_a_retried_stream_is_replayed_whole(gateway: Gateway, keys: KeyIssuer) -> None:
    key, idem = keys.issue("pro"), secrets.token_hex(8)
    payload = body("[[mock:tokens=20]] stream me", stream=True)
    first = post(gateway, key, idem, payload)
    again = post(gateway, key, idem, payload)
    assert first.content.rstrip().endswith(b"data: [DONE]")
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"].startswith("text/event-stream")


def test_the_same_key_with_another_body_is_refused(gateway: Gateway, keys: KeyIssuer) -> None:
    key, idem = keys.issue("pro"), secrets.token_hex(8)
    assert post(gateway, key, idem, body("one")).status_code == 200
    other = post(gateway, key, idem, body("another"))
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_a_retry_while_the_first_is_in_flight_gets_409(gateway: Gateway, keys: KeyIssuer) -> None:
    key, idem = keys.issue("pro"), secrets.token_hex(8)
    payload = body("[[mock:ttft=1500]] slow")
    answers: list[int] = []
    first = threading.Thread(
        target=lambda: answers.append(post(gateway, key, idem, payload).status_code)
    )
    first.start()
    second = post(gateway, key, idem, payload)  # the slow one claims the key first, or this does
    first.join(timeout=30)
    assert sorted([*answers, second.status_code]) == [200, 409]


def test_an_answer_too_long_to_keep_is_served_again_not_replayed(
    gateway: Gateway, keys: KeyIssuer
) -> None:
    key, idem = keys.issue("pro"), secrets.token_hex(8)
    payload = body("[[mock:tokens=12000]] long", stream=True)
    first = post(gateway, key, idem, payload)
    assert first.status_code == 200 and len(first.content) > 1 << 20  # past MAX_KEPT
    again = post(gateway, key, idem, payload)
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers
    assert len(again.content) > 1 << 20


def test_the_same_body_forced_onto_another_model_is_not_a_replay(
    gateway: Gateway, keys: KeyIssuer
) -> None:
    """/v1/gpt4 forces gpt-4 on the body: the same bytes are another request there, and
    must not be answered with the gpt-3.5 answer kept for them."""
    key, idem = keys.issue("pro"), secrets.token_hex(8)
    payload = body("which model?")
    assert post(gateway, key, idem, payload).status_code == 200
    other = post(gateway, key, idem, payload, "/v1/gpt4/chat/completions")
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    again = post(gateway, key, idem, payload)
    assert again.headers["idempotent-replayed"] == "true"


def test_a_replay_is_refused_when_the_plan_no_longer_allows_the_model(gateway: Gateway) -> None:
    """A kept answer is replayed only to a caller still allowed the model: a tenant moved
    from pro to free (no gpt-4) gets 403, not the gpt-4 answer."""
    tenant, idem = f"moved-{secrets.token_hex(4)}", secrets.token_hex(8)  # its own tenant
    gateway.cli("tenants", "create", tenant, "--plan", "pro")
    created = json.loads(gateway.cli("keys", "create", "--tenant", tenant, "--json"))
    key = IssuedKey(created["key_id"], created["key"])
    payload = {**body("gpt-4 only"), "model": "gpt-4"}
    assert post(gateway, key, idem, payload).status_code == 200
    gateway.cli("tenants", "update", tenant, "--plan", "free")
    deadline = time.monotonic() + 5  # key_cache_ttl is 200ms
    while (again := post(gateway, key, idem, payload)).status_code == 200:
        assert again.headers["idempotent-replayed"] == "true"
        assert time.monotonic() < deadline, "the plan change never applied"
        time.sleep(0.05)  # poll interval, not a wait for the outcome
    assert again.status_code == 403, again.text
    assert again.json()["error"]["code"] == "model_not_allowed"
