"""The gateway sets the cycle collector's young-generation threshold from
``server.gc_threshold`` once it has started (after freezing what start-up built), and
leaves the older generations' thresholds as they were."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import policy
from quotagate.app import Gateway, GatewayApp
from quotagate.config.schema import Policy
from quotagate.settings import Settings


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """This process's thresholds, put back after the test (the setting is global)."""
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)  # distinct older values: they must be kept
    yield gc.get_threshold()
    gc.set_threshold(*before)
    gc.unfreeze()


async def test_start_up_sets_the_young_generation_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thresholds: tuple[int, int, int]
) -> None:
    monkeypatch.setenv("QUOTAGATE_SECRET", "gc-test-secret")
    doc = policy("http://127.0.0.1:9/v1")
    doc["server"]["gc_threshold"] = 4321
    doc["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path}/qg.db"}
    app = GatewayApp(Gateway(Policy.model_validate(doc), Settings(None, tmp_path)))
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []
    seen: list[tuple[int, int, int]] = []

    async def receive() -> dict[str, Any]:
        message = next(messages)
        if message["type"] == "lifespan.shutdown":
            seen.append(gc.get_threshold())  # as the running gateway had it
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen == [(4321, 11, 12)]
