"""The client side of the end-to-end tests: SDK clients, keys issued through the CLI,
the OpenAI error shape, and what the mock upstream saw."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from harness import Gateway

TIMEOUT = 10.0
ERROR_FIELDS = {"message", "type", "param", "code"}
CHAT_MODEL = "gpt-3.5-turbo"
# The shared gateway's own credential for its embeddings deployment (``api_key_env``).
UPSTREAM_CREDENTIAL_ENV = "QG_E2E_UPSTREAM_KEY"
UPSTREAM_CREDENTIAL = "sk-upstream-credential-e2e"


def messages(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT
    )


def async_sdk(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT
    )


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str

    @property
    def secret_part(self) -> str:
        """What follows the visible key id: the part that must never be stored or logged."""
        return self.key.split("_", 1)[1]


class KeyIssuer:
    """Keys created through the CLI, one tenant per plan; remembers every key it issued.

    ``issue`` gives a fresh key (a test that spends a rate limit needs its own);
    ``shared`` gives one key per plan for tests that spend little or nothing of it.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.issued: list[IssuedKey] = []
        self._tenants: set[str] = set()
        self._shared: dict[str, IssuedKey] = {}

    def issue(self, plan: str) -> IssuedKey:
        tenant = f"{plan}-tenant"
        if tenant not in self._tenants:
            self.gateway.cli("tenants", "create", tenant, "--plan", plan)
            self._tenants.add(tenant)
        created = json.loads(self.gateway.cli("keys", "create", "--tenant", tenant, "--json"))
        key = IssuedKey(created["key_id"], created["key"])
        self.issued.append(key)
        return key

    def shared(self, plan: str) -> IssuedKey:
        if plan not in self._shared:
            self._shared[plan] = self.issue(plan)
        return self._shared[plan]

    def revoke(self, key: IssuedKey) -> None:
        self.gateway.cli("keys", "revoke", key.key_id)


class MockUpstream:
    """The mock LLM's own control endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def last_request(self) -> dict[str, Any]:
        """The headers (lower-cased names), parsed body and path of the last /v1 request."""
        recorded = httpx.get(f"{self.base_url}/_mock/last-request", timeout=TIMEOUT).json()
        assert recorded is not None, "the mock has received no /v1 request"
        return dict(recorded)

    def requests_seen(self) -> int:
        stats = httpx.get(f"{self.base_url}/_mock/stats", timeout=TIMEOUT).json()
        return int(stats["requests"])


def assert_error_body(body: Any, code: str) -> dict[str, Any]:
    """``body`` is exactly the OpenAI error shape, with ``code``; returns its ``error``."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_FIELDS, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    return dict(error)


class HttpResponse(Protocol):
    """What an httpx response and the SDK's own response type have in common."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def assert_error_response(response: HttpResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id"), response.headers
    assert response.headers["content-type"] == "application/json"
    return assert_error_body(response.json(), code)


def assert_sdk_error(exc: openai.APIStatusError, status: int, code: str) -> dict[str, Any]:
    """An SDK exception raised for a gateway error response: status, shape, request id."""
    assert exc.status_code == status, exc
    assert exc.code == code, exc
    return assert_error_response(exc.response, status, code)


def poll_until_raises(
    call: Callable[[], object], error: type[Exception], within: float
) -> Exception:
    """Repeat ``call`` until it raises ``error``; fail if it has not within ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            call()
        except error as exc:
            return exc
        assert time.monotonic() < deadline, f"still no {error.__name__} after {within}s"
        time.sleep(0.02)  # poll interval, not a wait for the outcome


def ledger_row(gw: Gateway, request_id: str, within: float = 5.0) -> dict[str, Any]:
    """The ledger row of ``request_id`` in a gateway's SQLite database, once written."""
    deadline = time.monotonic() + within
    while True:
        with closing(sqlite3.connect(gw.tmp / "qg.db", timeout=5)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT * FROM qg_ledger WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"{request_id} not in the ledger after {within}s"
        time.sleep(0.05)  # poll interval, not a wait for the outcome
