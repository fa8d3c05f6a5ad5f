"""Benchmark: CPU a request costs the gateway in-process, per accounting mode, no network.

``bench/modes.py`` measures issue #4's target end to end (wrk, a mock upstream, req/s),
and on a shared machine its rounds vary by ±20%: too much to see a change of a few
microseconds. This drives the very same pipeline in one process instead: the gateway
built from ``bench/run.py``'s policy, its forward stage replaced by an answer made in
place (so the request path is the gateway's own work only: parse, authenticate, limits,
reservation, settlement, the ledger's record and its database writes, metrics), called
through its ASGI entry point in a loop. Reported: CPU seconds of the whole process (the
ledger's database thread included) per request, best of ``--repeat`` runs, and what each
mode adds to ``off``.

What it leaves out: uvicorn, aiohttp and the sockets (about four fifths of a request's
cost end to end), so its ratios are not the end-to-end ones; its differences are.

    .venv/bin/python bench/accounting_cpu.py [--requests 10000] [--repeat 5]
    .venv/bin/python bench/accounting_cpu.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from quotagate.app import Gateway, GatewayApp
from quotagate.config.loader import load_policy
from quotagate.pipeline.context import RequestContext
from quotagate.pipeline.forward import Forward
from quotagate.pipeline.responses import send_json
from quotagate.settings import Settings
from quotagate.upstream.usage import usage_of
from run import BODY, QUOTAGATE, policy

MODES = ("off", "ledger", "budget")  # as bench/run.py's --accounting
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "model": "gpt-3.5-turbo",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello from the bench."}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}).encode()  # fmt: skip


class Answer:
    """In place of ``forward``: what the upstream would have answered, at no cost."""

    name = "forward"

    async def __call__(self, ctx: RequestContext) -> None:
        ctx.upstream_started = time.perf_counter()
        ctx.usage = usage_of(ANSWER)
        ctx.upstream_ended = time.perf_counter()
        await send_json(ctx, 200, ANSWER)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="per measured run")
    p.add_argument("--repeat", type=int, default=5, help="measured runs per mode")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--database", default="sqlite", help="sqlite, or a postgresql URL")
    return p.parse_args()


def prepare(mode: str, data: Path, database: str) -> tuple[Path, str, str | None]:
    """The policy file, an API key of a tenant on its plan, and the PostgreSQL schema
    made for the run (None on SQLite)."""
    doc = policy(9, "http://127.0.0.1:9/v1", data, mode, access_log="off")
    schema = None
    if database != "sqlite":
        schema = f"qg_bench_{secrets.token_hex(6)}"
        doc["database"] = {"url": database, "schema": schema}
    config = data / "policy.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "QUOTAGATE_DATA_DIR": str(data)}

    def cli(*words: str) -> str:
        done = subprocess.run(
            [*QUOTAGATE, *words, "--config", str(config)],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout

    cli("tenants", "create", "bench", "--plan", "enterprise")
    return config, json.loads(cli("keys", "create", "--tenant", "bench", "--json"))["key"], schema


async def measure(mode: str, args: argparse.Namespace, data: Path) -> list[float]:
    config, key, schema = prepare(mode, data, args.database)
    os.environ["QUOTAGATE_DATA_DIR"] = str(data)
    gateway = Gateway(load_policy(config), Settings.from_env(str(config)))
    app = GatewayApp(gateway)
    endpoint = app.endpoints["/v1/chat/completions"]
    endpoint.pipeline.stages = tuple(
        Answer() if isinstance(stage, Forward) else stage for stage in endpoint.pipeline.stages
    )
    await gateway.start()
    gc.collect()
    gc.freeze()  # as the server does once started
    body = BODY.encode()
    headers = [
        (b"host", b"bench"),
        (b"authorization", b"Bearer " + key.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{mode}: answered {message['status']}")

    def scope() -> dict[str, Any]:
        return {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                "headers": headers, "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 9), "query_string": b"", "http_version": "1.1",
                "scheme": "http"}  # fmt: skip

    async def run(n: int) -> None:
        for i in range(n):
            await app(scope(), receive, send)
            if i % 32 == 0:
                await asyncio.sleep(0)  # the ledger's writer gets its turns, as under load
        # The records are written within the measured time: the writer flushes on its
        # timer (flush_interval) and has no "drained" event to wait on.
        while gateway.ledger is not None and gateway.ledger.stats.queued:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    try:
        await run(2_000)  # warm-up: caches, the key, first batches
        per_request = []
        for _ in range(args.repeat):
            cpu = time.process_time()
            await run(args.requests)
            per_request.append((time.process_time() - cpu) / args.requests * 1e6)
        return per_request
    finally:
        await gateway.stop()
        if schema is not None:
            await drop_schema(args.database, schema)


async def drop_schema(url: str, schema: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


def main() -> None:
    args = parse_args()
    results: dict[str, list[float]] = {}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"qg-cpu-{mode}-") as tmp:
            results[mode] = asyncio.run(measure(mode, args, Path(tmp)))
        print(f"{mode}: best {min(results[mode]):.1f} µs of CPU a request", file=sys.stderr)
    database = "SQLite" if args.database == "sqlite" else "PostgreSQL"
    print(f"\nIn-process, no network, {args.requests:,} requests x {args.repeat} runs a "
          f"mode, ledger on {database}: CPU µs a request (best; median)\n")  # fmt: skip
    print("| mode | best | median | added to off (best) |")
    print("|---|---:|---:|---:|")
    base = min(results["off"]) if "off" in results else None
    for mode, runs in results.items():
        added = f"{min(runs) - base:+.1f}" if base is not None and mode != "off" else ""
        print(f"| {mode} | {min(runs):.1f} | {statistics.median(runs):.1f} | {added} |")


if __name__ == "__main__":
    main()
