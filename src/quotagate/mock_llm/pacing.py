"""Simulated model latency: time to first token, then a steady token rate."""

from __future__ import annotations

from dataclasses import dataclass

from .directives import Directives
from .settings import MockSettings


@dataclass(slots=True, frozen=True)
class Pacing:
    first_s: float  # before the first token
    gap_s: float  # between two tokens

    @classmethod
    def of(cls, settings: MockSettings, directives: Directives, in_flight: int = 0) -> Pacing:
        ttft_ms = settings.ttft_ms if directives.ttft_ms is None else directives.ttft_ms
        rate = settings.tokens_per_second
        # The load model: beyond capacity every sequence slows down in proportion.
        slow = max(1.0, in_flight / settings.capacity) if settings.capacity > 0 else 1.0
        return cls(ttft_ms / 1000.0 * slow, slow / rate if rate > 0 else 0.0)

    def before_token(self, position: int) -> float:
        return self.first_s if position == 0 else self.gap_s

    def total_s(self, tokens: int) -> float:
        """How long a streamed answer of ``tokens`` tokens takes; non-streamed ones match it."""
        return self.first_s + self.gap_s * max(tokens - 1, 0)
