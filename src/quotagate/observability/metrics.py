"""Every Prometheus metric quotagate exports, declared here with fixed label sets.

Labels are bounded: endpoint and decision come from fixed vocabularies, status is an
HTTP status code, model is a name from the policy's catalog (or ``unknown``).
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
    return REQUESTS.labels(endpoint, model, str(status), decision)


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
)

REAPED = Counter(
    "quotagate_reservations_reaped_total",
    "Reservations never settled by their gateway (killed), recorded as unsettled.",
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
