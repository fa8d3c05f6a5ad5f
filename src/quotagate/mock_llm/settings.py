"""Process settings of the mock upstream; the fault fields may be changed while it runs."""

from __future__ import annotations

from dataclasses import dataclass

# The fields ``POST /_mock/faults`` may change on a running server.
FAULT_FIELDS: tuple[str, ...] = (
    "error_rate",
    "error_status",
    "hang_rate",
    "drop_rate",
    "ttft_ms",
    "tokens_per_second",
    "fail_next",
    "retry_after",
    "capacity",
)


@dataclass(slots=True)
class MockSettings:
    """How the mock upstream listens, how fast it answers and how often it fails.

    Mutable on purpose: the live fault switch updates the one instance the app holds.
    """

    host: str = "127.0.0.1"
    port: int = 9000
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0  # 0 means no delay between tokens
    error_rate: float = 0.0
    error_status: int = 500
    hang_rate: float = 0.0
    drop_rate: float = 0.0  # streams are cut mid-way, bodies are truncated
    # The next `fail_next` /v1 requests answer error_status (with `retry-after:
    # retry_after` when that is above 0), then the mock is healthy again.
    fail_next: float = 0
    retry_after: float = 0.0
    # Load model (0: off): up to `capacity` requests at once are served at full speed;
    # beyond it time to first token and token gaps stretch by in_flight / capacity (a
    # GPU shared by more sequences), and past twice the capacity requests fail with 503
    # more and more often. GET /_mock/load reports the memory pressure it implies.
    capacity: float = 0
    models: tuple[str, ...] = ("gpt-3.5-turbo", "gpt-4", "text-embedding-3-small")
    seed: int = 0
    default_completion_tokens: int = 16
