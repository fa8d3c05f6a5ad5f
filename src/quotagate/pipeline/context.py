"""Per-request state that flows through the stages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quotagate.auth.principal import Principal
from quotagate.routing.catalog import Target
from quotagate.store.base import Adjustable, Check, CheckOutcome, LeaseCheck, ReservationCheck
from quotagate.upstream.usage import Usage

if TYPE_CHECKING:
    from quotagate.config.snapshot import LimitSet

ASGIScope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


# What the limits admitted: the plan's LimitSet for the model, its checks and their
# outcomes, in that order (the reservation last, when metered), and where the response
# headers admission wrote are (``response_headers[start:end]``). A plain tuple: one per
# request, and a NamedTuple's constructor costs ten times as much.
Admitted = tuple["LimitSet", list[Check], tuple[CheckOutcome, ...], int, int]


class RequestContext:
    # __slots__: one of these per request (STYLE 11): no per-instance dict.
    __slots__ = (
        "admitted",
        "api_key",
        "body",
        "cache_key",
        "capped",
        "choices",
        "client_ip",
        "content_length",
        "decision",
        "denial",
        "endpoint",
        "first_token",
        "held",
        "idempotency_key",
        "idempotency_store",
        "kept_body",
        "kept_bytes",
        "leases",
        "max_tokens",
        "model",
        "output_cap",
        "payload",
        "payload_changed",
        "plan",
        "price",
        "principal",
        "priority",
        "probe",
        "prompt_estimate",
        "receive",
        "record_id",
        "request_id",
        "reservation",
        "reserved_micros",
        "reserved_tokens",
        "response_headers",
        "response_started",
        "response_type",
        "scope",
        "send",
        "settle_checks",
        "settle_units",
        "span",
        "started_at",
        "status",
        "stream",
        "strip_usage",
        "target",
        "traceparent",
        "tracestate",
        "traffic_class",
        "ttfb",
        "unroutable",
        "upstream_ended",
        "upstream_started",
        "usage",
    )

    def __init__(self, scope: ASGIScope, receive: Any, send: Any, endpoint: Any) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.endpoint = endpoint
        self.request_id = ""
        self.record_id = ""  # the ledger's id for this request: always the gateway's own
        self.idempotency_key = b""
        # The claimed key and the claim's value (its fingerprint and the request id), to
        # finish after the response.
        self.idempotency_store: tuple[str, bytes] | None = None
        self.kept_body: list[bytes] | None = None  # the answer's bytes, kept for replay
        self.kept_bytes = 0
        self.cache_key = ""  # a cacheable request's key: its answer is kept when it ends
        self.response_type = b""
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
        # A cap on the answer the gateway adds to a request that named none (the plan's
        # max_tokens or default_max_tokens, a clamp): forward writes it in the field
        # the serving model takes (``Target.cap_field``).
        self.output_cap: int | None = None
        self.choices = 1  # completions the upstream generates: n (or best_of) a request
        self.target: Target | None = None
        # The deployment whose slot shape took for this request (forward uses it), and
        # its probe ticket when that slot is a half-open circuit's probe (else 0).
        self.held: Target | None = None
        self.probe = 0
        self.priority = 0  # the plan's (shaping), worked out by shape; sent upstream
        self.capped = False  # counted by the gateway-wide in-flight cap
        self.traffic_class = ""  # x-quotagate-class: interactive (default) or batch
        # No deployment could take it, but a kept answer might (after the limits).
        self.unroutable: Exception | None = None
        self.leases: list[LeaseCheck] = []
        self.admitted: Admitted | None = None  # None when not limited
        # Metering: what was reserved (tokens, money), on which counters (each in
        # "tokens" or "micros"), the record a reaper takes if this gateway dies, and what
        # the upstream reported.
        self.settle_checks: list[Adjustable] = []
        self.settle_units: tuple[str, ...] = ()
        self.reservation: ReservationCheck | None = None
        self.prompt_estimate = 0
        self.reserved_tokens = 0
        self.reserved_micros = 0
        self.price = (0, 0)  # micro-units per 1M input / output tokens
        self.usage: Usage | None = None
        self.strip_usage = False
        self.started_at = 0.0  # wall clock, for the ledger
        self.ttfb: float | None = None
        self.response_headers: Headers = []
        self.response_started = False
        self.status = 0
        self.decision = "allowed"
        self.denial: str | None = None  # the refusal's error code
        # Observability: perf_counter times of the upstream call (0.0: not sent) and of
        # a stream's first output; the W3C trace context (the client's, or the upstream
        # span's once tracing has one); the request's span when tracing is on.
        self.upstream_started = 0.0
        self.upstream_ended = 0.0
        self.first_token = 0.0
        self.traceparent = ""
        self.tracestate = ""
        self.span: Any = None
