"""Every Prometheus metric quotagate exports, declared here with fixed label sets.

Labels are bounded: endpoint and decision come from fixed vocabularies, status is an
HTTP status code, model is a name from the policy's catalog (or ``unknown``), tenant
(opt-in) is capped per process (see ``observability.tenants``).

With ``serve --workers N`` each worker writes its values to files under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the
module is imported) and ``/metrics`` of any worker answers for all of them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "quotagate_requests",
    "Requests answered, by endpoint, model, status and decision.",
    ("endpoint", "model", "status", "decision"),
)
ERRORS = Counter(
    "quotagate_errors",
    "Requests answered with an error, by error class.",
    ("error",),
)
# Every value a request's ``decision`` can take; anything else is counted as "other".
DECISIONS = frozenset(
    {
        "allowed", "replayed", "client_disconnected", "bad_request", "denied_auth",
        "denied_plan", "not_found", "rate_limited", "quota_exhausted", "unavailable",
        "upstream_error", "upstream_timeout", "error", "cache_hit", "shed", "ip_refused",
    }
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "quotagate_request_duration_seconds",
    "Time from request start to the end of the response, by endpoint.",
    ("endpoint",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RELOADS = Counter(
    "quotagate_policy_reloads",
    "Policy reloads by outcome (applied, refused).",
    ("outcome",),
)
DEGRADED = Counter(
    "quotagate_limit_degraded_decisions",
    "Limit decisions taken without the store, by failure policy (open, closed, local).",
    ("mode",),
)
STORE_ERRORS = Counter(
    "quotagate_store_errors",
    "Limit store calls that failed or timed out, by error.",
    ("error",),
)
NEGATIVE_CACHE_HITS = Counter(
    "quotagate_limit_negative_cache_hits",
    "Requests refused locally because their counter was known to refuse until later.",
)


# labels() takes a lock and rebuilds the key tuple on every call; the label sets are
# bounded, so the children are looked up once and kept (measured with timeit:
# 2.0 µs → 0.4 µs per inc).
@lru_cache(maxsize=4096)
def request_counter(endpoint: str, model: str, status: int, decision: str) -> Any:
    return REQUESTS.labels(endpoint, model, str(status), decision_label(decision))


def decision_label(decision: str) -> str:
    return decision if decision in DECISIONS else "other"


@lru_cache(maxsize=64)
def request_timer(endpoint: str) -> Any:
    return REQUEST_SECONDS.labels(endpoint)


LEDGER_RECORDS = Counter(
    "quotagate_ledger_records",
    "Usage ledger records by outcome (written, spooled, replayed, rejected).",
    ("outcome",),
)
LEDGER_QUEUE_DEPTH = Gauge(
    "quotagate_ledger_queue_depth",
    "Usage ledger records waiting in memory to be written.",
    multiprocess_mode="livesum",  # with several workers: the sum over live workers
)

REAPED = Counter(
    "quotagate_reservations_reaped_total",
    "Reservations never settled by their gateway (killed), recorded as unsettled.",
)
IDEMPOTENCY_LOST = Counter(
    "quotagate_idempotency_claims_lost_total",
    "Requests that outlived their Idempotency-Key claim: another request held the key "
    "when they ended, so their answer was not kept.",
)
QUOTA_EXHAUSTED = Counter(
    "quotagate_quota_exhausted_total",
    "Requests refused or degraded because a quota or budget was used up, by action.",
    ["action"],  # reject | fallback | clamp
)
PROMPT_ESTIMATE_RATIO = Histogram(
    "quotagate_prompt_estimate_ratio",
    "The reservation's prompt-token estimate ÷ the upstream's reported prompt tokens.",
    buckets=(0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0),
)
LIMIT_BYPASSED = Counter(
    "quotagate_limit_bypassed",
    "Requests of keys under an emergency bypass: no limit, quota or budget applied.",
)

# Latency buckets for the upstream and first token: model calls take milliseconds
# (embeddings, a cache) to minutes (long generations).
_MODEL_BUCKETS = (
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300,
)  # fmt: skip
# The gateway's own time: tens of microseconds to a few milliseconds when healthy.
_OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
)  # fmt: skip

UPSTREAM_SECONDS = Histogram(
    "quotagate_upstream_duration_seconds",
    "Time from sending a request upstream to the end of its answer, by model.",
    ("model",),
    buckets=_MODEL_BUCKETS,
)
FIRST_TOKEN_SECONDS = Histogram(
    "quotagate_time_to_first_token_seconds",
    "Streams: time from sending the request upstream to its first output, by model.",
    ("model",),
    buckets=_MODEL_BUCKETS,
)
OVERHEAD_SECONDS = Histogram(
    "quotagate_gateway_overhead_seconds",
    "Forwarded requests: total time minus the upstream's time, by endpoint.",
    ("endpoint",),
    buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter(
    "quotagate_tokens",
    "Tokens charged, by model and direction (prompt, completion).",
    ("model", "direction"),
)
COST = Counter(
    "quotagate_cost",
    "Money charged at the models' prices, in currency units (the price table's), by model.",
    ("model",),
)
STORE_SECONDS = Histogram(
    "quotagate_store_duration_seconds",
    "Limit store calls on the request path, by operation (acquire, settle).",
    ("operation",),
    buckets=_OVERHEAD_BUCKETS,
)
TENANT_REQUESTS = Counter(
    "quotagate_tenant_requests",
    "Requests by tenant and decision (only with observability.metrics.tenant_labels).",
    ("tenant", "decision"),
)
TENANT_TOKENS = Counter(
    "quotagate_tenant_tokens",
    "Tokens charged by tenant and direction (only with tenant_labels).",
    ("tenant", "direction"),
)
TENANT_COST = Counter(
    "quotagate_tenant_cost",
    "Money charged by tenant, in currency units (only with tenant_labels).",
    ("tenant",),
)


@lru_cache(maxsize=1024)
def model_series(model: str) -> tuple[Any, Any, Any, Any, Any]:
    """Upstream time, first token, prompt and completion tokens, cost: for one model."""
    return (
        UPSTREAM_SECONDS.labels(model),
        FIRST_TOKEN_SECONDS.labels(model),
        TOKENS.labels(model, "prompt"),
        TOKENS.labels(model, "completion"),
        COST.labels(model),
    )


@lru_cache(maxsize=64)
def overhead_timer(endpoint: str) -> Any:
    return OVERHEAD_SECONDS.labels(endpoint)


STORE_ACQUIRE = STORE_SECONDS.labels("acquire")
STORE_SETTLE = STORE_SECONDS.labels("settle")
SPEND_ANOMALIES = Counter(
    "quotagate_spend_anomalies",
    "Tenants found spending far faster than their own baseline (one per cooldown).",
)
IN_FLIGHT = Gauge(
    "quotagate_upstream_in_flight",
    "Requests sent to a deployment and not yet answered in full, by model and deployment.",
    ("model", "deployment"),
    multiprocess_mode="livesum",
)
STORE_CIRCUIT_OPEN = Gauge(
    "quotagate_store_circuit_open",
    "1 while the limit store's circuit breaker is open (calls skipped), else 0.",
    multiprocess_mode="livemax",
)


BREAKER_STATE = Gauge(
    "quotagate_deployment_circuit_state",
    "A deployment's circuit breaker: 0 closed, 1 half open, 2 open.",
    ("model", "deployment"),
    multiprocess_mode="livemax",
)
BREAKER_TRANSITIONS = Counter(
    "quotagate_deployment_circuit_transitions",
    "Circuit breaker changes by model, deployment and the state entered.",
    ("model", "deployment", "state"),
)
UPSTREAM_RETRIES = Counter(
    "quotagate_upstream_retries",
    "Upstream calls retried before the first byte, by reason; denied: the retry budget "
    "or the deadline said no.",
    ("reason", "outcome"),
)
FALLBACKS = Counter(
    "quotagate_fallbacks",
    "Requests served by another model than the one asked for, by model, fallback and "
    "reason (outage, overload, circuit_open, quota).",
    ("model", "fallback", "reason"),
)
FALLBACK_REFUSALS = Counter(
    "quotagate_fallback_refusals",
    "Fallbacks on a retry that the fallback model's own limits refused (the request was "
    "not sent to it), by model and fallback.",
    ("model", "fallback"),
)
CACHE_LOOKUPS = Counter(
    "quotagate_response_cache",
    "Response cache lookups by result (hit, miss, stored, skipped: not deterministic).",
    ("result",),
)
HEALTH_CHECKS = Counter(
    "quotagate_health_checks",
    "Active health checks by model, deployment and outcome (ok, failed).",
    ("model", "deployment", "outcome"),
)


QUEUE_WAITING = Gauge(
    "quotagate_queue_waiting",
    "Requests waiting for a slot of a full deployment, by model and deployment.",
    ("model", "deployment"),
    multiprocess_mode="livesum",
)
QUEUE_WAIT_SECONDS = Histogram(
    "quotagate_queue_wait_seconds",
    "Time requests waited for a deployment's slot, by plan priority.",
    ("priority",),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SHED = Counter(
    "quotagate_shed",
    "Requests shed (503) by reason: max_wait, queue_full, displaced (by higher "
    "priority), in_flight_cap.",
    ("reason",),
)
CONCURRENCY_LIMIT = Gauge(
    "quotagate_deployment_concurrency_limit",
    "A deployment's concurrency limit now (adaptive, or its max_concurrency).",
    ("model", "deployment"),
    multiprocess_mode="livesum",
)
HEALTH_FACTOR = Gauge(
    "quotagate_limit_health_factor",
    "The factor a plan's rate limits are scaled by now (shaping.pressure; 1: unscaled).",
    ("plan",),
    multiprocess_mode="livemin",
)
PREAUTH_REFUSED = Counter(
    "quotagate_preauth_refused",
    "Requests refused before authentication by the per-address guard (shaping.ip_guard).",
)


@lru_cache(maxsize=1024)
def in_flight(model: str, deployment: str) -> Any:
    return IN_FLIGHT.labels(model, deployment)
