"""Alert webhooks once per threshold per quota per period, across every instance.

The first request to reach a threshold claims it in the shared store (set-if-absent,
kept until the period after next begins); only the claimant sends the webhook. Each
instance also remembers its claims so later requests cost no store call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime

from quotagate.auth.principal import Principal
from quotagate.budget.alerts import Alert, AlertSender
from quotagate.limits.engine import LimitEngine
from quotagate.limits.policy import CompiledLimit
from quotagate.store.base import CheckOutcome, CounterCheck, StoreUnavailable

log = logging.getLogger(__name__)
_MAX_REMEMBERED = 100_000


class QuotaAlerts:
    def __init__(self, engine: LimitEngine, sender: AlertSender | None) -> None:
        self._engine = engine
        self.sender = sender
        self._claimed: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def reached(
        self,
        principal: Principal,
        limit: CompiledLimit,
        check: CounterCheck,
        outcome: CheckOutcome,
        highest: float,
        currency: str,
    ) -> None:
        """``highest``: the highest of ``limit``'s thresholds the quota's use has reached.
        Each threshold up to it alerts once a period: one request may pass two."""
        if self.sender is None:
            return
        now = time.time()
        start = check.period_at(now)[0]
        for threshold in limit.alerts:  # sorted
            if threshold > highest:
                break
            key = f"al:{{t:{principal.tenant_id}}}:{check.key}:{start:.0f}:{threshold}"
            if key in self._claimed:
                continue
            if len(self._claimed) >= _MAX_REMEMBERED:
                self._claimed.clear()
            self._claimed.add(key)
            alert = Alert(
                alert_id=hashlib.sha256(key.encode()).hexdigest()[:32],
                tenant_id=principal.tenant_id,
                tenant_name=principal.tenant_name,
                quota=limit.name,
                unit=limit.unit,  # type: ignore[arg-type]
                threshold=threshold,
                limit=check.limit,
                used=check.limit - outcome.remaining,
                period_start=datetime.fromtimestamp(start, UTC),
                resets_at=datetime.fromtimestamp(now + outcome.reset_after, UTC),
                currency=currency if limit.unit == "micros" else None,
            )
            ttl = max(60.0, check.next_end - now)
            task = asyncio.create_task(self._claim_and_send(key, ttl, alert))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _claim_and_send(self, key: str, ttl: float, alert: Alert) -> None:
        try:
            first = await self._engine.put_if_absent(key, b"1", ttl) is None
        except StoreUnavailable:
            self._claimed.discard(key)  # try again on a later request
            return
        if first and self.sender is not None:
            log.info(
                "quota alert %s: %s at %.0f%%", alert.tenant_id, alert.quota, alert.threshold * 100
            )
            self.sender.send(alert)
