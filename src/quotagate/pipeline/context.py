"""Per-request state that flows through the stages."""

from __future__ import annotations

from typing import Any

from quotagate.auth.principal import Principal
from quotagate.routing.catalog import Target
from quotagate.store.base import Adjustable, LeaseCheck

ASGIScope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


class RequestContext:
    # __slots__: one of these per request (STYLE 11): no per-instance dict.
    __slots__ = (
        "api_key",
        "body",
        "client_ip",
        "content_length",
        "decision",
        "endpoint",
        "leases",
        "max_tokens",
        "model",
        "payload",
        "payload_changed",
        "plan",
        "principal",
        "prompt_estimate",
        "receive",
        "request_id",
        "reserved_tokens",
        "response_headers",
        "response_started",
        "scope",
        "send",
        "status",
        "stream",
        "strip_usage",
        "target",
        "token_checks",
        "usage_tokens",
    )

    def __init__(self, scope: ASGIScope, receive: Any, send: Any, endpoint: Any) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.endpoint = endpoint
        self.request_id = ""
        self.api_key = ""
        self.content_length = -1
        client = scope.get("client")
        self.client_ip: str = client[0] if client else ""
        self.principal: Principal | None = None
        self.plan: Any = None
        self.body = b""
        self.payload: dict[str, Any] = {}
        self.payload_changed = False  # a stage rewrote the payload: body is stale
        self.model = ""
        self.stream = False
        self.max_tokens: int | None = None
        self.target: Target | None = None
        self.leases: list[LeaseCheck] = []
        # Token accounting (only when the plan has token limits): what was reserved,
        # on which counters, and what the upstream reported.
        self.token_checks: list[Adjustable] = []
        self.prompt_estimate = 0
        self.reserved_tokens = 0
        self.usage_tokens: int | None = None
        self.strip_usage = False
        self.response_headers: Headers = []
        self.response_started = False
        self.status = 0
        self.decision = "allowed"
