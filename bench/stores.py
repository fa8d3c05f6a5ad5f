"""Benchmark: the gateway with the memory store vs Redis vs a Redis Cluster, one run.

The mock LLM, the load generator and the Redis servers share core 1; the gateway (one
worker) has core 0 and is started once per store with the same policy but
``store.url``. Per store: a warm-up, then measured wrk runs at saturation, each
bracketed by ``INFO commandstats`` on the Redis servers and the gateway's request count
(round trips per request). Then, a gateway per store again, paced wrk at one fixed
rate (half the slowest store's req/s). ``store.timeout`` is 1 s, so Redis is measured,
not the fallbacks: a gateway that took any degraded decision or saw any store error
invalidates its store's runs.

Two policies: ``shared-slot`` (a per-key and a per-tenant limit, both tagged
``{t:<tenant>}``: one EVALSHA decides both) and ``cross-slot`` (plus a ``global``
limit in another slot: two round trips on a Cluster, one on a standalone server).

    .venv/bin/python bench/stores.py [--repeat 3] [--wait-quiet 300] [--write]

Run on demand; not a test. Needs wrk, taskset, redis-server, redis-cli, two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from cpu import LOAD_CORE, PROXY_CORE, measure_cpu, wait_for_quiet
from loadgen import Load, Run, add_load_options, require_tools, run_wrk
from processes import Child, check_answers, free_port
from redis_stores import CallsPerRequest, RedisDeployment, script_commands, start_redis_stores
from report import Target, write_results
from run import (
    BENCH,
    BODY,
    CHAT,
    QUOTAGATE,
    REPO,
    Bench,
    _better,
    _exit_on_signal,
    command_line,
    cpu_summary,
    describe,
    policy,
    say,
)  # fmt: skip
from stores_report import CROSS, STORES, VARIANTS, StoreResult, render, targets_met

RESULTS_START, RESULTS_END = "<!-- bench:stores:start -->", "<!-- bench:stores:end -->"
_SETTLE_S = 0.3  # before each snapshot: every answer in flight is counted on both sides
_LIMIT = {"requests": 10_000_000, "per": "1m"}  # runs the whole limiter path, never denies
_NOT_PROXIED = frozenset({"metrics", "healthz", "readyz", "models"})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="quotagate: memory vs Redis vs Redis Cluster.")
    add_load_options(p, default_rate="slowest store's req/s / 2")
    p.add_argument(
        "--variants", default=",".join(VARIANTS),
        help=f"policies to run, comma-separated (default: {','.join(VARIANTS)})",
    )  # fmt: skip
    args = p.parse_args()
    args.fixed_tool = "wrk"  # Bench.fixed's paced wrk
    args.fixed_workers = 0
    return args


def limits(variant: str) -> list[dict[str, object]]:
    rules: list[dict[str, object]] = [{"scope": "key", **_LIMIT}, {"scope": "tenant", **_LIMIT}]
    if variant == CROSS:
        rules.append({"scope": "global", **_LIMIT})
    return rules


def store_policy(port: int, upstream: str, data: Path, url: str, variant: str) -> object:
    """run.py's policy with this store (a generous timeout: Redis, not its fallbacks)
    and this variant's limits."""
    config = policy(port, upstream, data, "off")
    config["store"] = {"url": url, "timeout": "1s"}
    config["plans"] = {"enterprise": {"models": ["*"], "limits": limits(variant)}}
    return config


def gateway_counts(gateway: Child) -> tuple[int, float]:
    """Proxied requests answered, and degraded decisions + store errors, so far."""
    with urllib.request.urlopen(gateway.base_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    requests, trouble = 0, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if family.name == "quotagate_requests":
                if sample.labels.get("endpoint") not in _NOT_PROXIED:
                    requests += int(sample.value)
            elif family.name in ("quotagate_limit_degraded_decisions", "quotagate_store_errors"):
                trouble += sample.value
    return requests, trouble


class StoresBench:
    def __init__(
        self, tmp: Path, args: argparse.Namespace, stack: ExitStack,
        stores: tuple[str, ...] = STORES,
    ) -> None:  # fmt: skip
        self.tmp, self.args = tmp, args
        self.bench = Bench(tmp, args, stack)  # the mock, the CLI, pinned children, fixed rate
        self.redis = start_redis_stores(tmp / "redis", LOAD_CORE, stack, stores)
        self.in_scripts = script_commands()
        self.key = ""

    def run(self, variants: list[str]) -> list[StoreResult]:
        """Per variant: each store at saturation, then each at one fixed rate (half the
        slowest store's req/s: a rate all three can hold), a gateway per store and pass."""
        mock = self.bench.start_mock()
        results = []
        for variant in variants:
            row = [StoreResult(variant, s, Target(f"{s} ({variant})")) for s in STORES]
            for result in row:
                with self.serving(result, mock) as (gateway, watched):
                    self.saturate(result, gateway, watched)
            rate = self.args.rate or half_slowest(row)
            if rate is None and not self.args.skip_fixed_rate:
                say(f"{variant}: fixed-rate runs skipped: no valid saturation run")
            for result in row if rate and not self.args.skip_fixed_rate else ():
                with self.serving(result, mock) as (gateway, watched):
                    self.bench.targets[result.target.name] = result.target  # Bench.fixed fills
                    self.bench.fixed(result.target.name, gateway, watched, rate)
            results += row
        return results

    @contextmanager
    def serving(self, result: StoreResult, mock: Child) -> Iterator[tuple[Child, list[Child]]]:
        """The gateway on the result's store, and every process a run should watch; any
        degraded decision or store error it counted makes the result invalid."""
        gateway = self.start_gateway(mock, result.variant, result.store)
        deployment = self.redis.get(result.store)
        try:
            yield gateway, [gateway, mock, *(deployment.children(LOAD_CORE) if deployment else [])]
            _, trouble = gateway_counts(gateway)
            if trouble:
                result.problems.append(f"{trouble:.0f} degraded decisions or store errors")
        finally:
            gateway.stop()

    def start_gateway(self, mock: Child, variant: str, store: str) -> Child:
        """The gateway on ``store`` with ``variant``'s limits, answering a chat request."""
        upstream, port = mock.base_url + "/v1", free_port()
        url = self.redis[store].url if store in self.redis else "memory://"
        config = self.tmp / f"policy-{variant}-{store.replace(' ', '-')}.yaml"
        data = self.tmp / "data"
        config.write_text(yaml.safe_dump(store_policy(port, upstream, data, url, variant)))
        if not self.key:  # one tenant and key in the one database, for every gateway
            self.key = self.create_key(str(config))
        cmd = [*QUOTAGATE, "serve", "--config", str(config), "--log-level", "warning"]
        gateway = self.bench.start(f"gateway-{store.replace(' ', '-')}", PROXY_CORE, cmd, port)
        headers = {"content-type": "application/json", "authorization": f"Bearer {self.key}"}
        check_answers(f"gateway ({store})", gateway.base_url + CHAT, BODY.encode(), headers)
        return gateway

    def create_key(self, config: str) -> str:
        self.bench.cli("tenants", "create", "bench", "--plan", "enterprise", "--config", config)
        out = self.bench.cli("keys", "create", "--tenant", "bench", "--config", config, "--json")
        key: str = json.loads(out)["key"]
        self.bench.load = Load(key, BODY, LOAD_CORE)
        return key

    def saturate(self, result: StoreResult, gateway: Child, watched: list[Child]) -> None:
        a, name = self.args, result.target.name
        deployment = self.redis.get(result.store)
        url = gateway.base_url + CHAT
        say(f"{name}: saturation, wrk warm-up {a.warmup:g}s, then {a.repeat} x {a.duration:g}s")
        run_wrk(url, self.bench.load, a.connections, a.warmup)
        for _ in range(a.repeat):
            run, cpu, calls = self.measured_run(url, gateway, watched, deployment)
            rt = "" if calls is None else (
                f"; Redis per request: {calls.script_calls:.4f} script calls, "
                f"{calls.round_trips:.4f} commands sent ({calls.requests} requests)"
            )  # fmt: skip
            say(f"{name}: {describe(run)}{rt}; CPU {cpu_summary(cpu)}")
            best = result.target.saturated
            if best is None or _better(run, best):
                result.target.saturated, result.target.cpu["saturated"] = run, cpu
                result.calls = calls

    def measured_run(
        self, url: str, gateway: Child, watched: list[Child], deployment: RedisDeployment | None
    ) -> tuple[Run, dict[str, float], CallsPerRequest | None]:
        """One saturated run, with the Redis commands it caused per request answered."""
        time.sleep(_SETTLE_S)  # the warm-up's or the last run's answers in flight
        before = deployment.command_stats() if deployment else None
        requests_before, _ = gateway_counts(gateway)
        load, connections, seconds = self.bench.load, self.args.connections, self.args.duration
        run, cpu = measure_cpu(watched, lambda: run_wrk(url, load, connections, seconds))
        time.sleep(_SETTLE_S)
        requests = gateway_counts(gateway)[0] - requests_before
        if deployment is None or before is None:
            return run, cpu, None
        stats = deployment.command_stats() - before
        return run, cpu, CallsPerRequest(stats, requests, self.in_scripts)


def half_slowest(row: list[StoreResult]) -> float | None:
    rates = [r.target.saturated.rps for r in row if r.valid_saturated and r.target.saturated]
    return min(rates) / 2 if rates else None


def settings_lines(args: argparse.Namespace) -> list[str]:
    fixed = "skipped" if args.skip_fixed_rate else (
        f"wrk -t1 -c{args.fixed_connections} -d{args.duration:g}s paced by chat.lua at "
        + (f"{args.rate:g} req/s" if args.rate else "half the slowest store's saturated req/s")
    )  # fmt: skip
    return [
        f"- Saturation: wrk -t1 -c{args.connections} -d{args.duration:g}s; fixed rate: {fixed}; "
        f"each after a {args.warmup:g}s warm-up"
        + (f"; best of {args.repeat} runs." if args.repeat > 1 else "."),
        f"- Gateway alone on core {PROXY_CORE} (one worker), restarted per store with the same "
        f"policy but `store.url` (`store.timeout: 1s`); mock LLM, wrk and every redis-server "
        f"(Redis {_redis_version()}, standalone; Cluster of 3 masters, no replicas) on core "
        f"{LOAD_CORE}.",
        "- Limits per request: `shared-slot`: key + tenant (10M requests/min each, tagged "
        "`{t:<tenant>}`); `cross-slot`: the same + a `global` limit in another slot.",
        "- Round trips: `INFO commandstats` deltas on every server over the measured run "
        "÷ proxied requests the gateway answered in it (its `/metrics`); commands a "
        "shipped Lua script runs inside the server are listed apart (*in script*).",
    ]


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "?")


def main() -> int:
    args = parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"bench: unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    if args.repeat < 1 or args.duration <= 0:
        raise SystemExit("bench: --repeat must be ≥ 1 and --duration > 0")
    require_tools("wrk")
    if missing := [t for t in ("redis-server", "redis-cli") if shutil.which(t) is None]:
        raise SystemExit(f"bench: missing {', '.join(missing)}; `apt-get install redis-server`")
    if not {PROXY_CORE, LOAD_CORE} <= os.sched_getaffinity(0):
        raise SystemExit(f"bench: needs cores {PROXY_CORE} and {LOAD_CORE} (taskset pinning)")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    wait_for_quiet(args.wait_quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="qg-stores-") as tmp, ExitStack() as stack:
            results = StoresBench(Path(tmp), args, stack).run(variants)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        say(f"bench: failed: {exc}")
        return 3
    body = render(results, settings_lines(args))
    print(body)
    if args.write:
        write_results(
            BENCH / "RESULTS.md", command_line(), body, REPO,
            markers=(RESULTS_START, RESULTS_END), title="Stores: memory vs Redis vs Redis Cluster",
        )  # fmt: skip
        say(f"written to {BENCH / 'RESULTS.md'}")
    if not all(r.valid for r in results):
        return 2  # errors, or degraded decisions: flagged in the report, never a result
    return 0 if targets_met(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
