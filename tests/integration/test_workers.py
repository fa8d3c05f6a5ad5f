"""``serve --workers N``: processes share the port and, through Redis, the counters."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import httpx
import yaml

from harness import QUOTAGATE, Gateway, policy

BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


def test_memory_store_refuses_several_workers(tmp_path: Path, upstream: str) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(policy(upstream)))
    result = subprocess.run(
        [*QUOTAGATE, "serve", "--config", str(config), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--workers > 1 needs a shared store" in result.stderr


def test_two_workers_share_exact_limits(tmp_path: Path, upstream: str) -> None:
    doc = policy(upstream)
    doc["store"] = {"url": "redis://127.0.0.1:6379/0", "prefix": f"qgtest:{secrets.token_hex(6)}:",
                    "timeout": "5s"}  # fmt: skip
    doc["plans"]["free"]["limits"] = [
        {"scope": "key", "requests": 50, "per": "1m", "algorithm": "sliding_window"}
    ]
    gw = Gateway(tmp_path, doc).start("--workers", "2")
    try:
        key = gw.tenant_key("acme", "free")

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                headers = {"authorization": f"Bearer {key}"}
                url = gw.base_url + "/v1/chat/completions"
                responses = await asyncio.gather(
                    *(client.post(url, json=BODY, headers=headers) for _ in range(200))
                )
                return [r.status_code for r in responses]

        statuses = asyncio.run(burst())
        assert statuses.count(200) == 50 and statuses.count(429) == 150
    finally:
        gw.stop()
