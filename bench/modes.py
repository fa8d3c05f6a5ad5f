"""Benchmark: what accounting and the access log cost, gateway against gateway, one run.

The same gateway under the same saturating load (wrk, closed loop), restarted per
mode with only the policy changed, the modes interleaved round by round so that a
machine getting busier or quieter shifts all of them alike:

- ``off``: limits only (the limits-engine path), no ledger, no access log;
- ``budget``: plus a token quota and a money budget reserved and settled per request
  and every request in the usage ledger (issue #4: at most 15% lost to ``off``);
- ``log-off`` / ``log-on``: the default policy's ledger, metrics always on, the JSON
  access log off / on (issue #7: at most 10% lost with it on).

Each mode keeps its best round (noise on a shared machine only ever costs req/s).
Proxy on core 0, mock LLM and wrk on core 1, as in ``bench/run.py``. For each round the
gateway's CPU per request is read from /proc over the measured run, split between its
main thread (the event loop) and its other threads (the ledger's SQLite connections).
The limits live in the gateway's memory, or with ``--store redis`` in a private
redis-server on core 1 (the deployment of many instances: admission and settlement
are script calls there).

    .venv/bin/python bench/modes.py [--rounds 3] [--duration 8] [--store redis] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import yaml

from cpu import LOAD_CORE, PROXY_CORE, wait_for_quiet
from loadgen import Load, Run, require_tools, run_wrk
from processes import Child, check_answers, free_port, start_child
from redis_stores import (
    CallsPerRequest,
    RedisDeployment,
    script_commands,
    start_redis_stores,
)
from report import record_section
from run import BODY, CHAT, QUOTAGATE, command_line, policy, say

MODES = {  # name → (accounting, access log, per-request metrics, tracing)
    "off": ("off", "off", True, False),
    "budget": ("budget", "off", True, False),
    "log-off": ("ledger", "off", True, False),
    "log-on": ("ledger", "on", True, False),
    "unobserved": ("ledger", "off", False, False),
    "traced": ("ledger", "on", True, True),
}
TARGETS = (("budget", "off", 0.15, "#4: reservation, settlement and ledger"),
           ("log-on", "unobserved", 0.10, "#7: metrics and access log on vs both off"),
           ("traced", "log-on", None, "#7: tracing on vs off (no exporter)"),
           ("log-on", "log-off", None, "the access log alone"),
           ("log-off", "off", None, "the ledger alone (log-off: off plus the ledger)"))  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds over every mode")
    p.add_argument("--duration", type=float, default=8, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per start")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of " + ", ".join(MODES)
    )
    p.add_argument(
        "--database", default="sqlite",
        help="sqlite (a file per run), or a postgresql+asyncpg:// URL (a schema per run, "
        "dropped after)",
    )  # fmt: skip
    p.add_argument(
        "--store", default="memory", choices=("memory", "redis"),
        help="the limits' store: in process, or a private redis-server on the load's core",
    )  # fmt: skip
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS")
    p.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    return p.parse_args()


class Modes:
    def __init__(self, tmp: Path, args: argparse.Namespace, stack: ExitStack) -> None:
        self.tmp, self.args, self.stack = tmp, args, stack
        self.env = {**os.environ, "QUOTAGATE_SECRET": secrets.token_urlsafe(24)}
        # mode → per round: the gateway's CPU µs a request (main thread, other threads)
        self.cpu: dict[str, list[tuple[float, float]]] = {}
        self.store_url = "memory://"
        self.redis: RedisDeployment | None = None
        # mode → per round: Redis script calls (round trips) per request answered
        self.calls: dict[str, list[float]] = {}
        if args.store == "redis":
            self.redis = start_redis_stores(tmp / "redis", LOAD_CORE, stack, ["redis"])["redis"]
            self.store_url = self.redis.url

    def start(self, name: str, core: int, cmd: list[str], port: int, env: dict[str, str]) -> Child:
        child = start_child(
            name, core, cmd, self.tmp / f"{name}.log", f"http://127.0.0.1:{port}", env
        )
        self.stack.callback(child.stop)
        return child

    def gateway(self, mode: str, upstream: str, round_: int) -> tuple[Child, Load]:
        accounting, access_log, metrics, tracing = MODES[mode]
        data = self.tmp / f"{mode}-{round_}"
        data.mkdir()
        env = {**self.env, "QUOTAGATE_DATA_DIR": str(data)}
        port = free_port()
        config = data / "policy.yaml"
        doc = policy(port, upstream, data, accounting, access_log)
        doc["store"] = {"url": self.store_url, "timeout": "1s"}
        observability = doc.setdefault("observability", {})
        observability["metrics"] = {"enabled": metrics}
        observability["tracing"] = {"enabled": tracing}
        if tracing:  # spans made and ended, exported nowhere: the instrumentation's cost
            env["OTEL_TRACES_EXPORTER"] = "none"
        if self.args.database != "sqlite":
            schema = f"qg_bench_{secrets.token_hex(6)}"
            doc["database"] = {"url": self.args.database, "schema": schema}
            self.stack.callback(drop_schema, self.args.database, schema)
        config.write_text(yaml.safe_dump(doc))
        self.cli(env, "tenants", "create", "bench", "--plan", "enterprise", "--config", str(config))
        out = self.cli(
            env, "keys", "create", "--tenant", "bench", "--config", str(config), "--json"
        )
        cmd = [*QUOTAGATE, "serve", "--config", str(config), "--log-level", "warning"]
        return self.start(f"gateway-{mode}", PROXY_CORE, cmd, port, env), Load(
            json.loads(out)["key"], BODY, LOAD_CORE
        )

    @staticmethod
    def cli(env: dict[str, str], *args: str) -> str:
        import subprocess

        result = subprocess.run([*QUOTAGATE, *args], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"quotagate {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def run(self, modes: list[str]) -> dict[str, list[Run]]:
        port = free_port()
        mock_cmd = [*QUOTAGATE, "mock-llm", "--listen", f"127.0.0.1:{port}"]
        mock = self.start("mock", LOAD_CORE, mock_cmd, port, self.env)
        upstream = mock.base_url + "/v1"
        runs: dict[str, list[Run]] = {m: [] for m in modes}
        self.cpu = {m: [] for m in modes}
        self.calls = {m: [] for m in modes}
        for round_ in range(self.args.rounds):
            for mode in modes if round_ % 2 == 0 else reversed(modes):
                gateway, load = self.gateway(mode, upstream, round_)
                url = gateway.base_url + CHAT
                headers = {
                    "content-type": "application/json",
                    "authorization": f"Bearer {load.key}",
                }
                check_answers(mode, url, BODY.encode(), headers)
                run_wrk(url, load, self.args.connections, self.args.warmup)
                main, other = gateway.thread_cpu_seconds()
                before = self.redis.command_stats() if self.redis is not None else None
                result = run_wrk(url, load, self.args.connections, self.args.duration)
                main_after, other_after = gateway.thread_cpu_seconds()
                if before is not None:
                    ran = self.redis.command_stats() - before
                    calls = CallsPerRequest(ran, max(1, result.requests), script_commands())
                    self.calls[mode].append(calls.script_calls)
                per_request = 1e6 / max(1, result.requests)
                cpu = ((main_after - main) * per_request, (other_after - other) * per_request)
                calls_said = (
                    f", {self.calls[mode][-1]:.2f} Redis script calls a request"
                    if self.calls[mode] else ""
                )  # fmt: skip
                say(
                    f"round {round_ + 1} {mode}: {result.rps:,.0f} req/s, CPU µs a request: "
                    f"{cpu[0]:.1f} main thread + {cpu[1]:.1f} other threads{calls_said}"
                )
                runs[mode].append(result)
                self.cpu[mode].append(cpu)
                gateway.stop()
        return runs


def drop_schema(url: str, schema: str) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def drop() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


def report(
    runs: dict[str, list[Run]],
    cpu: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
    calls: dict[str, list[float]],
) -> str:
    best = {m: max((r.rps for r in rs if r.valid), default=0.0) for m, rs in runs.items()}
    store = "memory store" if args.store == "memory" else "Redis store (a private server on core 1)"
    lines = [
        f"wrk -c{args.connections} -d{args.duration:g}s after {args.warmup:g}s warm-up; "
        f"{args.rounds} interleaved rounds, best kept; one gateway worker on core "
        f"{PROXY_CORE}, {store}, "
        f"{'SQLite' if args.database == 'sqlite' else 'PostgreSQL'} ledger; mock LLM and wrk on "
        f"core {LOAD_CORE}.",
        "",
        "| mode | best req/s | every round | CPU µs a request, main + other threads (median) "
        "| Redis script calls a request (median) |",
        "|---|---:|---|---|---:|",
    ]
    for mode, rs in runs.items():
        rounds = ", ".join(f"{r.rps:,.0f}" for r in rs)
        main = statistics.median(c[0] for c in cpu[mode])
        other = statistics.median(c[1] for c in cpu[mode])
        lines.append(
            f"| {mode} | {best[mode]:,.0f} | {rounds} | {main:.1f} + {other:.1f} = "
            f"{main + other:.1f} | "
            f"{f'{statistics.median(calls[mode]):.2f}' if calls.get(mode) else '—'} |"
        )
    lines += ["", "**Targets:**", ""]
    for mode, base, limit, what in TARGETS:
        if mode in best and base in best and best[base]:
            loss = 1 - best[mode] / best[base]
            medians = statistics.median(r.rps for r in runs[mode]) / statistics.median(
                r.rps for r in runs[base]
            )
            text = (
                f"- {what}: {mode} {best[mode]:,.0f} vs {base} {best[base]:,.0f} req/s, "
                f"{loss:.1%} lost best to best ({1 - medians:.1%} median to median)"
            )
            if limit is not None:
                verdict = "met" if loss <= limit else "NOT met"
                text += f" (target ≤ {limit:.0%}): **{verdict}**"
            lines.append(text)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    require_tools("wrk")
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"unknown modes: {unknown}")
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    with tempfile.TemporaryDirectory(prefix="qg-modes-") as tmp, ExitStack() as stack:
        bench = Modes(Path(tmp), args, stack)
        runs = bench.run(modes)
    body = report(runs, bench.cpu, args, bench.calls)
    print(body)
    if args.write:
        db = "sqlite" if args.database == "sqlite" else "postgresql"
        on = "" if args.store == "memory" else f", {args.store} store"
        record_section(
            f"modes-{db}{'' if args.store == 'memory' else '-' + args.store}",
            f"Modes ({db} ledger{on}): accounting and access log, gateway against gateway",
            command_line(), body,
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
