"""A deployment's concurrency gate and its admission queue.

A deployment takes at most ``limit`` requests at once: its ``max_concurrency``, or the
adaptive limit (``shaping.adaptive``) below it. A request that finds it full waits in
the deployment's queue, grouped by priority. When a request ends its slot is handed
straight to a waiter (no stampede), chosen weighted-fair between the priority levels
waiting: a level with priority p gets slots in proportion to p + 1 (stride
scheduling), so enterprise traffic goes first without starving the rest. A waiter
leaves after its class's ``max_wait``; when the queue is at ``max_length`` a newcomer
of a higher priority takes the place of the newest waiter of the lowest one, which is
shed (503 with Retry-After), otherwise the newcomer is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from quotagate.errors import Shed
from quotagate.observability.metrics import QUEUE_WAITING, SHED

if TYPE_CHECKING:
    from quotagate.routing.health import DeploymentHealth


class Waiter:
    __slots__ = ("batch", "future", "priority")

    def __init__(self, priority: int, future: asyncio.Future[None], batch: bool) -> None:
        self.priority = priority
        self.future = future
        self.batch = batch


class Level:
    """The waiters of one priority: interactive ones are served before batch ones (a
    customer's batch burst does not hold up its own interactive traffic), and batch
    ones are shed first."""

    __slots__ = ("batch", "interactive")

    def __init__(self) -> None:
        self.interactive: deque[Waiter] = deque()
        self.batch: deque[Waiter] = deque()

    def __bool__(self) -> bool:
        return bool(self.interactive or self.batch)

    def append(self, waiter: Waiter) -> None:
        (self.batch if waiter.batch else self.interactive).append(waiter)

    def popleft(self) -> Waiter:
        return self.interactive.popleft() if self.interactive else self.batch.popleft()

    def pop(self) -> Waiter:
        """The one to shed: the newest batch waiter, else the newest interactive one."""
        return self.batch.pop() if self.batch else self.interactive.pop()

    def remove(self, waiter: Waiter) -> bool:
        queue = self.batch if waiter.batch else self.interactive
        if waiter in queue:
            queue.remove(waiter)
            return True
        return False


class Gate:
    def __init__(self, health: DeploymentHealth) -> None:
        self.health = health
        self.cap: int | None = 0  # the deployment's max_concurrency (0: not set yet)
        self.adaptive: object = None  # the shaping.adaptive the limit was set under
        self.limit: float | None = None  # what is enforced now (cap, or adaptive)
        self.queued = 0
        # shaping.queue.reserve: slots only priorities >= reserved_for may take.
        self.reserved = 0
        self.reserved_for = 0
        self._levels: dict[int, Level] = {}
        self._pass: dict[int, float] = {}  # stride scheduling: each level's virtual time
        self._now = 0.0
        self._gauge = QUEUE_WAITING.labels(health.model, health.name)

    def full(self) -> bool:
        return self.limit is not None and self.health.in_flight >= self.limit

    def full_for(self, priority: int) -> bool:
        """Full for a request of ``priority`` (the reserved slots are not its; at least
        one slot is never reserved, so no priority starves)."""
        if self.limit is None:
            return False
        kept = min(self.reserved, self.limit - 1) if priority < self.reserved_for else 0
        return self.health.in_flight >= self.limit - max(0.0, kept)

    async def enter(
        self, priority: int, max_wait: float, max_length: int, batch: bool = False
    ) -> int:
        """Take a slot, waiting for one if the deployment is full; returns the probe
        ticket (``DeploymentHealth.begin``). Raises ``Shed`` when it cannot wait."""
        if not self.queued and not self.full_for(priority):
            return self.health.begin()
        if self.queued >= max_length:
            self._make_room(priority, batch)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = Waiter(priority, future, batch)
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = Level()
        if not level:  # a level that was idle starts one stride after the current time
            start = max(self._pass.get(priority, 0.0), self._now)
            self._pass[priority] = start + 1.0 / (priority + 1)
        level.append(waiter)
        self.queued += 1
        self._gauge.inc()
        self.hand_off()  # a reserved slot may be free for this priority
        try:
            async with asyncio.timeout(max_wait):
                await future
        except TimeoutError:
            if _granted(future):  # handed a slot just as the wait ran out: take it
                return 0
            self._forget(waiter)
            SHED.labels("max_wait").inc()
            raise Shed(
                f"The model server for {self.health.model} is at capacity; waited "
                f"{max_wait:g}s for a slot.",
            ) from None
        except asyncio.CancelledError:
            if _granted(future):
                self.health.end(0)  # the slot was handed over as we were cancelled
            else:
                self._forget(waiter)
            raise
        return 0  # a handed-over slot is already counted in in_flight

    def hand_off(self) -> None:
        """Slots are free: give them to waiters, weighted-fair by priority."""
        while self.queued and not self.full():
            waiter = self._pop(reserved_only=self.full_for(-1))
            if waiter is None:  # only reserved slots are free, and nobody waits for one
                return
            if waiter.future.done():  # timed out or displaced: already forgotten
                continue
            self.health.in_flight += 1
            waiter.future.set_result(None)

    def _pop(self, reserved_only: bool = False) -> Waiter | None:
        passes = self._pass  # the lowest virtual time goes; on a tie, the higher priority
        floor = self.reserved_for if reserved_only else -1
        priority = min(
            (p for p, level in self._levels.items() if level and p >= floor),
            key=lambda p: (passes[p], -p),
            default=None,
        )
        if priority is None:
            return None
        waiter = self._levels[priority].popleft()
        self._now = self._pass[priority]
        self._pass[priority] += 1.0 / (priority + 1)
        self.queued -= 1
        self._gauge.dec()
        return waiter

    def _make_room(self, priority: int, batch: bool) -> None:
        """The queue is full: shed the newest waiter of the lowest priority below
        ``priority`` (an interactive newcomer may also take a batch waiter's place at
        its own priority), or refuse the newcomer."""
        while True:
            victim = self._victim(priority, batch)
            if victim is None:
                SHED.labels("queue_full").inc()
                raise Shed(
                    f"The model server for {self.health.model} is at capacity; retry shortly."
                )
            self.queued -= 1
            self._gauge.dec()
            if not victim.future.done():  # not one that timed out or left meanwhile
                break
        SHED.labels("displaced").inc()
        victim.future.set_exception(
            Shed(
                f"The model server for {self.health.model} is at capacity and higher-priority "
                "traffic took your place; retry shortly."
            )
        )

    def _victim(self, priority: int, batch: bool) -> Waiter | None:
        lowest = min((p for p, level in self._levels.items() if level), default=None)
        if lowest is None or lowest > priority:
            return None
        level = self._levels[lowest]
        if lowest < priority:
            return level.pop()
        if not batch and level.batch:  # same priority: interactive before batch
            return level.batch.pop()
        return None

    def _forget(self, waiter: Waiter) -> None:
        level = self._levels.get(waiter.priority)
        if level is not None and level.remove(waiter):
            self.queued -= 1
            self._gauge.dec()


def _granted(future: asyncio.Future[None]) -> bool:
    """The waiter was handed a slot (its future holds a result)."""
    return future.done() and not future.cancelled() and future.exception() is None
