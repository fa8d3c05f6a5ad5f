"""Two counts over a sliding window, estimated from a current and a previous bucket
(the previous one weighted by how much of it still overlaps the window): what the
circuit breaker counts (successes, failures) and what the retry budget counts
(requests, retries)."""

from __future__ import annotations

from collections.abc import Callable


class SlidingPair:
    __slots__ = ("_clock", "_started", "current", "previous", "window")

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._started = self._clock()
        self.current = [0, 0]
        self.previous = [0, 0]

    def add(self, which: int) -> None:
        self._roll()
        self.current[which] += 1

    def recent(self) -> tuple[float, float]:
        """Both counts over the last ``window``."""
        self._roll()
        share = 1 - (self._clock() - self._started) / self.window
        cur, prev = self.current, self.previous
        return cur[0] + prev[0] * share, cur[1] + prev[1] * share

    def _roll(self) -> None:
        now, window = self._clock(), self.window
        elapsed = now - self._started
        if elapsed < window:
            return
        self.previous = self.current if elapsed < 2 * window else [0, 0]
        self.current = [0, 0]
        self._started = now - (elapsed % window)
