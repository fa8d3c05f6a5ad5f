"""The mock's own control endpoints under ``/_mock``: faults, stats, last request."""

from __future__ import annotations

import asyncio
import os
import signal

import orjson

from .endpoints import request_object
from .errors import InvalidRequest
from .exchange import Exchange
from .settings import FAULT_FIELDS
from .state import MockState

_RATES = ("error_rate", "hang_rate", "drop_rate")


async def get_faults(exchange: Exchange, state: MockState) -> None:
    await exchange.send_json(200, orjson.dumps(state.settings))


async def set_faults(exchange: Exchange, state: MockState) -> None:
    """Validate every field first, so a bad update changes nothing."""
    updates = {name: _fault_value(name, value) for name, value in request_object(exchange).items()}
    for name, value in updates.items():
        setattr(state.settings, name, value)
    await exchange.send_json(200, orjson.dumps(state.settings))


async def get_stats(exchange: Exchange, state: MockState) -> None:
    await exchange.send_json(200, orjson.dumps(state.stats))


async def get_last_request(exchange: Exchange, state: MockState) -> None:
    recorded = state.last_request
    await exchange.send_json(200, orjson.dumps(None if recorded is None else recorded.as_json()))


async def get_load(exchange: Exchange, state: MockState) -> None:
    """The load model's health signal, as an inference server would expose it."""
    capacity = state.settings.capacity
    in_flight = state.stats.in_flight
    pressure = min(2.0, in_flight / capacity) if capacity > 0 else 0.0
    body = {
        "in_flight": in_flight,
        "capacity": capacity,
        "memory_pressure": round(pressure, 3),
        "peak_in_flight": state.stats.peak_in_flight,
    }
    await exchange.send_json(200, orjson.dumps(body))


async def stop(exchange: Exchange, state: MockState) -> None:
    """Answer, then stop this mock process as SIGTERM would (the demo's region outage)."""
    await exchange.send_json(200, b'{"stopping":true}')
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)


def _fault_value(name: str, value: object) -> float | int:
    if name not in FAULT_FIELDS:
        raise InvalidRequest(f"{name!r} is not a fault setting", param=name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name!r} must be a number", param=name)
    if name in _RATES and not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"{name!r} must be between 0 and 1", param=name)
    if name == "error_status" and (value != int(value) or not 400 <= value <= 599):
        raise InvalidRequest("'error_status' must be an HTTP error status", param=name)
    if value < 0:
        raise InvalidRequest(f"{name!r} must not be negative", param=name)
    return int(value) if name == "error_status" else float(value)
