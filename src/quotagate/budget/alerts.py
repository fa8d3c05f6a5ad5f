"""Quota and budget alert webhooks: a JSON POST, HMAC-signed, retried, every attempt recorded.

The gateway decides when an alert fires; this module only delivers it.

Signature scheme (what a receiver checks, see ``verify``)::

    x-quotagate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>

The timestamp is part of the signed bytes and is fresh for every attempt, so a receiver
refuses stale deliveries (default tolerance five minutes) and so replays. The alert id
(``x-quotagate-alert-id`` and ``"id"`` in the body) is the same for every attempt of one
alert: receivers de-duplicate on it. Several ``v1=`` entries are accepted so a receiver
can check one header against an old and a new secret while rotating.

Delivery: 2xx is delivered; connection errors, timeouts, 5xx, 408 and 429 are retried
with exponential backoff and full jitter (``Retry-After`` seconds are honoured, capped);
any other status, redirects included (they are not followed), gives up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import aiohttp
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from quotagate.budget.pricing import format_money
from quotagate.db.schema import alert_deliveries

log = logging.getLogger("quotagate.alerts")

Unit = Literal["tokens", "requests", "micros"]
_ERROR_CHARS = 500  # the width of qg_alert_deliveries.error
_URL_CHARS = 500


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    tenant_id: str
    tenant_name: str
    quota: str
    unit: Unit
    threshold: float
    limit: int
    used: int
    period_start: datetime
    resets_at: datetime
    currency: str | None

    def to_json(self) -> bytes:
        payload: dict[str, object] = {
            "type": "quota.threshold",
            "id": self.alert_id,
            "tenant": {"id": self.tenant_id, "name": self.tenant_name},
            "quota": self.quota,
            "unit": self.unit,
            "threshold": self.threshold,
            "limit": self.limit,
            "used": self.used,
            "remaining": max(0, self.limit - self.used),
            "period_start": self.period_start,
            "resets_at": self.resets_at,
            "currency": self.currency,
            "amounts_in": self.unit,
        }
        if self.unit == "micros":
            payload["limit_amount"] = format_money(self.limit)
            payload["used_amount"] = format_money(self.used)
        return orjson.dumps(payload)


@dataclass(frozen=True, slots=True)
class SpendAlert:
    """A tenant spending far faster than its own baseline (observability/anomaly.py)."""

    alert_id: str
    tenant_id: str
    tenant_name: str
    recent_per_hour: float
    baseline_per_hour: float
    ratio: float  # recorded as the delivery's threshold
    throttled_to: float | None  # the factor on the tenant's rate limits, if throttled
    currency: str
    at: datetime
    quota: str = "spend-anomaly"

    @property
    def threshold(self) -> float:
        return round(min(self.ratio, 1e6), 2)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "type": "spend.anomaly",
                "id": self.alert_id,
                "tenant": {"id": self.tenant_id, "name": self.tenant_name},
                "recent_spend_per_hour": round(self.recent_per_hour, 6),
                "baseline_spend_per_hour": round(self.baseline_per_hour, 6),
                "ratio": self.threshold,
                "currency": self.currency,
                "throttled_to": self.throttled_to,
                "at": self.at,
            }
        )


Notice = Alert | SpendAlert


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``x-quotagate-signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def _parse_signature(header_value: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header_value.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    return timestamp, signatures


def verify(
    secret: bytes, header_value: str, body: bytes, *, now: float, tolerance: float = 300.0
) -> bool:
    """Whether ``header_value`` signs ``body`` with ``secret`` within ``tolerance`` of ``now``."""
    timestamp, signatures = _parse_signature(header_value)
    if timestamp is None or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body).encode()
    # Bytes, not str: compare_digest raises on a non-ASCII str, and the header is untrusted.
    return any(hmac.compare_digest(expected, s.encode()) for s in signatures)


@dataclass(frozen=True, slots=True)
class _Outcome:
    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        code = self.status_code
        return code is None or code >= 500 or code in (408, 429)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:  # an HTTP-date: fall back to our own backoff
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class AlertSender:
    """Delivers alerts in background tasks; ``close`` before the session is closed."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        engine: AsyncEngine | None,
        url: str,
        secret: bytes,
        *,
        max_attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._engine = engine
        self._url = url
        self._secret = secret
        self._recorded_url = self._redact(str(URL(url).with_user(None)))[:_URL_CHARS]
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.delivered = 0
        self.failed = 0
        self.attempts = 0

    def send(self, alert: Notice) -> None:
        """Schedule delivery of ``alert`` and return at once."""
        if self._closed:
            raise RuntimeError("AlertSender is closed")
        task = asyncio.create_task(self._deliver(alert), name=f"alert-{alert.alert_id}")
        self._tasks.add(task)  # the loop holds only weak references to tasks
        task.add_done_callback(self._finished)

    # The timeout is how long to wait before cancelling the rest, not a limit on the call.
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for deliveries in flight, then cancel the rest."""
        self._closed = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("abandoned %d alert deliveries at shutdown", len(pending))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("alert delivery crashed", exc_info=exc)

    async def _deliver(self, alert: Notice) -> None:
        body = alert.to_json()
        for attempt in range(1, self._max_attempts + 1):
            outcome = await self._attempt(alert, body)
            await self._record(alert, attempt, outcome)
            if outcome.delivered:
                self.delivered += 1
                return
            if not outcome.retryable or attempt == self._max_attempts:
                break
            await asyncio.sleep(self._delay(attempt - 1, outcome.retry_after))
        self.failed += 1
        log.warning(
            "gave up on alert %s (tenant %s, quota %s at %s) after %d attempts: %s",
            alert.alert_id,
            alert.tenant_id,
            alert.quota,
            alert.threshold,
            attempt,
            outcome.error or f"HTTP {outcome.status_code}",
        )

    async def _attempt(self, alert: Notice, body: bytes) -> _Outcome:
        self.attempts += 1
        headers = {
            "content-type": "application/json",
            "x-quotagate-signature": sign(self._secret, int(self._clock()), body),
            "x-quotagate-alert-id": alert.alert_id,
            "user-agent": "quotagate-alerts",
        }
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as resp:
                return _Outcome(resp.status, None, _retry_after(resp.headers.get("Retry-After")))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _Outcome(None, self._error_text(exc))

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        ceiling = self._backoff * 2 ** min(retry, 32)  # the cap keeps 2**n from overflowing
        return random.uniform(0, min(self._max_backoff, ceiling))

    def _error_text(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return self._redact(text)[:_ERROR_CHARS]

    def _redact(self, text: str) -> str:
        """``text`` without the secret: rows and logs are read by more people than it is."""
        secret = self._secret.decode("utf-8", "replace")
        return text.replace(secret, "[redacted]") if secret else text

    async def _record(self, alert: Notice, attempt: int, outcome: _Outcome) -> None:
        if self._engine is None:
            return
        row = {
            "alert_id": alert.alert_id,
            "tenant_id": alert.tenant_id,
            "quota": alert.quota,
            "threshold": alert.threshold,
            "url": self._recorded_url,
            "attempt": attempt,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "delivered": outcome.delivered,
            "created_at": datetime.fromtimestamp(self._clock(), UTC),
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(alert_deliveries.insert().values(**row))
        except Exception:  # the record is best-effort: it must never stop a delivery
            log.warning(
                "could not record attempt %d of alert %s", attempt, alert.alert_id, exc_info=True
            )
