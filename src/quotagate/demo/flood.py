"""An open-loop traffic generator for the spike experiments: streams of chat requests,
each at a fixed rate from its own key and (through a trusted proxy's
``X-Forwarded-For``) its own client address, whatever the answers. Used by the demo's
spike scenario, ``bench/flood.py`` and the flood test."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MAX_OUTSTANDING = 2000  # requests in flight per run at most; beyond, sends are skipped


@dataclass(frozen=True, slots=True)
class Stream:
    name: str  # groups results: streams with the same name are counted together
    key: str
    address: str  # sent as X-Forwarded-For (the gateway must trust the sender)
    rate: float  # requests per second, open loop


@dataclass(slots=True)
class Outcome:
    sent: int = 0
    skipped: int = 0  # not sent: too many outstanding (the generator's own limit)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)  # error codes of refusals
    latencies: list[float] = field(default_factory=list)  # seconds, successful answers

    @property
    def success(self) -> float:
        return self.statuses[200] / self.sent if self.sent else 1.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def flood(
    base_url: str, streams: list[Stream], seconds: float, model: str = "gpt-3.5-turbo"
) -> dict[str, Outcome]:
    """Send every stream for ``seconds``; the outcomes by stream name."""
    outcomes = {s.name: Outcome() for s in streams}
    outstanding: set[asyncio.Task[None]] = set()
    url = base_url + "/v1/chat/completions"
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=MAX_OUTSTANDING, keepalive_timeout=3.0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(stream: Stream) -> None:
            outcome = outcomes[stream.name]
            headers = {"authorization": f"Bearer {stream.key}", "x-forwarded-for": stream.address}
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, headers=headers) as resp:
                    payload = await resp.json(content_type=None)
                    outcome.statuses[resp.status] += 1
                    if resp.status == 200:
                        outcome.latencies.append(time.perf_counter() - started)
                    elif isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                        outcome.codes[str(payload["error"].get("code"))] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                outcome.statuses[0] += 1  # no answer at all

        async def run(stream: Stream) -> None:
            interval = 1.0 / stream.rate
            start = time.perf_counter()
            n = 0
            while (due := start + n * interval) < start + seconds:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                n += 1
                if len(outstanding) >= MAX_OUTSTANDING:
                    outcomes[stream.name].skipped += 1
                    continue
                outcomes[stream.name].sent += 1
                task = asyncio.create_task(one(stream))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)

        await asyncio.gather(*(run(s) for s in streams))
        if outstanding:
            await asyncio.gather(*outstanding)
    return outcomes


def as_json(outcomes: dict[str, Outcome]) -> dict[str, dict[str, object]]:
    return {
        name: {
            "sent": o.sent, "skipped": o.skipped, "statuses": dict(o.statuses),
            "codes": dict(o.codes), "latencies": o.latencies,
        }
        for name, o in outcomes.items()
    }  # fmt: skip


def from_json(doc: dict[str, Any]) -> dict[str, Outcome]:
    return {
        name: Outcome(
            int(o["sent"]), int(o["skipped"]),
            Counter({int(k): int(v) for k, v in o["statuses"].items()}),
            Counter({str(k): int(v) for k, v in o["codes"].items()}),
            [float(t) for t in o["latencies"]],
        )
        for name, o in doc.items()
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m quotagate.demo.flood URL SECONDS NAME,KEY,ADDRESS,RATE ...``: the
    outcomes as JSON on stdout (a flood from a process of its own, so that it does not
    share an event loop with what is measured)."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    url, seconds, specs = args[0], float(args[1]), args[2:]
    streams = []
    for spec in specs:
        name, key, address, rate = spec.split(",")
        streams.append(Stream(name, key, address, float(rate)))
    print(json.dumps(as_json(asyncio.run(flood(url, streams, seconds)))))


if __name__ == "__main__":
    main()
