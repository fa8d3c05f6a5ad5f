"""The built-in issuer's token endpoint under guessing and floods, on real gateways.

Attempts are counted per client id and per address in the limit store before the
client is looked up or its secret hashed: two gateways sharing Redis share the count,
a right secret does not get past a client's exhausted count, and every refusal keeps
RFC 6749's shape (an OAuth library reads ``error`` as a string), the pre-auth address
guard's included.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness import Gateway, policy

REDIS_URL = "redis://127.0.0.1:6379/0"
FORM = {"grant_type": "client_credentials"}


def issuer_policy(upstream: str, **issuer: Any) -> dict[str, Any]:
    doc = policy(upstream)
    doc["auth"]["oauth_issuer"] = {"enabled": True, **issuer}
    return doc


def ask(base_url: str, client_id: str, secret: str = "not-the-secret") -> httpx.Response:
    data = {**FORM, "client_id": client_id, "client_secret": secret}
    response = httpx.post(base_url + "/oauth/token", data=data, timeout=10)
    assert response.headers["cache-control"] == "no-store"
    return response


def assert_too_many(response: httpx.Response, what: str) -> int:
    """An RFC 6749-shaped 429 naming what ran out; the Retry-After it gives."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"] == "too_many_requests", body  # a string, not OpenAI's object
    assert f"for this {what}" in body["error_description"], body
    wait = int(response.headers["retry-after"])
    assert wait >= 1 and f"retry after {wait} s" in body["error_description"]
    return wait


@contextmanager
def serving(tmp: Path, doc: dict[str, Any]) -> Iterator[str]:
    gateway = Gateway(tmp, doc).start()
    try:
        yield gateway.base_url
    finally:
        gateway.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"qgtest:{secrets.token_hex(6)}:"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


def test_attempts_per_client_are_counted_by_every_instance_before_the_lookup(
    tmp_path: Path, upstream: str, prefix: str
) -> None:
    doc = issuer_policy(
        upstream, per_client={"requests": 3, "per": "1h"}, per_address={"requests": 1000}
    )
    doc["store"] = {"url": REDIS_URL, "prefix": prefix, "timeout": "5s"}
    gateway = Gateway(tmp_path, doc).start()
    try:
        # Two instances on one database and one store, behind one load balancer.
        one, two = gateway.base_url, gateway.replica().base_url
        # An unknown id: counted before the lookup, on whichever instance is asked.
        assert [ask(url, "qgc_nobody").status_code for url in (one, two, one)] == [401] * 3
        wait = assert_too_many(ask(two, "qgc_nobody"), "client")
        assert wait > 60  # 3 an hour: the next attempt is 20 minutes away
        assert ask(one, "qgc_someone_else").status_code == 401  # its own count

        # A real client whose attempts ran out gets no token, even with its secret.
        gateway.cli("tenants", "create", "acme", "--plan", "free")
        made = json.loads(gateway.cli("clients", "create", "--tenant", "acme", "--json"))
        client_id, secret = made["client_id"], made["client_secret"]
        assert ask(two, client_id, secret).status_code == 200
        assert [ask(url, client_id).status_code for url in (one, two)] == [401, 401]
        assert_too_many(ask(one, client_id, secret), "client")
    finally:
        gateway.stop()


def test_attempts_per_address_span_client_ids(tmp_path: Path, upstream: str) -> None:
    doc = issuer_policy(upstream, per_address={"requests": 4, "per": "1h"})
    with serving(tmp_path, doc) as url:
        assert [ask(url, f"qgc_guess{i}").status_code for i in range(4)] == [401] * 4
        assert_too_many(ask(url, "qgc_guess4"), "address")


def test_the_pre_auth_address_guard_answers_the_token_endpoint_in_its_shape(
    tmp_path: Path, upstream: str
) -> None:
    doc = issuer_policy(upstream)
    doc["shaping"] = {"ip_guard": {"requests": 2, "per": "1m"}}
    with serving(tmp_path, doc) as url:
        assert [ask(url, f"qgc_flood{i}").status_code for i in range(2)] == [401, 401]
        assert_too_many(ask(url, "qgc_flood2"), "address")


def test_a_client_id_that_cannot_be_ours_is_refused_before_anything(
    tmp_path: Path, upstream: str
) -> None:
    doc = issuer_policy(upstream, per_address={"requests": 2, "per": "1h"})
    with serving(tmp_path, doc) as url:
        for bad in ("qgc_{tag}", "a:b", "x" * 65):
            response = ask(url, bad)
            assert response.status_code == 401 and response.json()["error"] == "invalid_client"
        # Refused before it was counted: the address still has both of its attempts.
        assert [ask(url, f"qgc_ok{i}").status_code for i in range(2)] == [401, 401]
        assert_too_many(ask(url, "qgc_ok2"), "address")
