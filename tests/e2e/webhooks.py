"""A webhook endpoint for the alert tests: a real HTTP server in the test process."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEADLINE = 10.0  # a retried delivery waits up to 0.5 s of jittered backoff


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]  # lower-cased names
    body: bytes
    answered: int

    @property
    def alert(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """A webhook endpoint on a free loopback port. It records every delivery and answers
    200, or a failure status for the first deliveries of a tenant it was told to fail."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.changed = threading.Condition()
        self._failures: dict[str, list[int]] = {}  # tenant id → statuses to answer first
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def fail_first(self, tenant_id: str, *statuses: int) -> None:
        with self.changed:
            self._failures[tenant_id] = list(statuses)

    def _answer(self, body: bytes) -> int:
        try:
            tenant = json.loads(body)["tenant"]["id"]
        except (ValueError, KeyError, TypeError):
            return 200
        with self.changed:
            pending = self._failures.get(tenant)
            return pending.pop(0) if pending else 200

    def _record(self, delivery: Delivery) -> None:
        with self.changed:
            self.deliveries.append(delivery)
            self.changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the stdlib's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver._answer(body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(Delivery(headers, body, status))

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def of(self, tenant_id: str) -> list[Delivery]:
        with self.changed:
            return [d for d in self.deliveries if d.alert["tenant"]["id"] == tenant_id]

    def wait_for(
        self, tenant_id: str, done: Callable[[list[Delivery]], bool], within: float = DEADLINE
    ) -> list[Delivery]:
        with self.changed:
            met = self.changed.wait_for(lambda: done(self.of(tenant_id)), timeout=within)
            found = self.of(tenant_id)
        assert met, f"deliveries for {tenant_id} after {within}s: {[d.alert for d in found]}"
        return found
