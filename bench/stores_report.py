"""The report of ``bench/stores.py``: per policy variant, a saturation and a fixed-rate
table (memory vs Redis vs Redis Cluster), Redis commands per request, and the issue's
targets."""

from __future__ import annotations

from dataclasses import dataclass, field

from cpu import NOISY_PCT
from loadgen import Run
from redis_stores import CallsPerRequest
from report import CPU_HEADER, Target, _cpu, _invalid, _noisy, _valid, _verdict

MEMORY, REDIS, CLUSTER = "memory", "redis", "redis cluster"
STORES = (MEMORY, REDIS, CLUSTER)
SHARED, CROSS = "shared-slot", "cross-slot"
VARIANTS = (SHARED, CROSS)

# The targets with Redis limits, one worker, counters sharing a slot.
MIN_REDIS_RPS = 3000.0
MIN_SHARE_OF_MEMORY = 0.7
ROUND_TRIPS_SHARED = 1.0
# Expected, not targets: a cross-slot limit costs a Cluster one more script call.
ROUND_TRIPS_CROSS = {REDIS: 1.0, CLUSTER: 2.0}
# Both counts are read with nothing in flight; this only forgives a straggler answer.
_ROUND_TRIP_SLACK = 0.001


@dataclass
class StoreResult:
    variant: str
    store: str
    target: Target  # the saturated and fixed-rate runs, and their CPU
    calls: CallsPerRequest | None = None  # during the kept saturated run; None: memory
    problems: list[str] = field(default_factory=list)  # degraded decisions, store errors

    @property
    def valid_saturated(self) -> bool:
        return self.target.saturated is not None and self.target.saturated.valid and (
            not self.problems
        )  # fmt: skip

    @property
    def valid(self) -> bool:
        runs = [r for r in (self.target.saturated, self.target.fixed) if r is not None]
        return not self.problems and all(r.valid for r in runs)


def _of(results: list[StoreResult], variant: str, store: str) -> StoreResult | None:
    return next((r for r in results if r.variant == variant and r.store == store), None)


def _saturated(result: StoreResult | None) -> Run | None:
    return result.target.saturated if result and result.valid_saturated else None


def _commands(calls: CallsPerRequest | None) -> str:
    if calls is None:
        return "—"
    sent = [f"{c} {_calls(n)}" for c, n, inside in calls.per_command() if not inside]
    inside = [f"{c} {n:.2f}" for c, n, inside in calls.per_command() if inside]
    text = ", ".join(sent) + (f"; *in script:* {', '.join(inside)}" if inside else "")
    return text + (f"; **{calls.errors} failed or rejected**" if calls.errors else "")


def _calls(per_request: float) -> str:
    return f"{per_request:.2f}" if per_request >= 0.01 else f"{per_request:.4f}"


def _round_trips(calls: CallsPerRequest | None) -> str:
    if calls is None:
        return "—"
    text = f"{calls.script_calls:.3f}"
    if f"{calls.round_trips:.4f}" != f"{calls.script_calls:.4f}":
        text += f" (all commands {calls.round_trips:.4f})"
    return text + f", over {calls.requests:,} requests"


def saturated_table(results: list[StoreResult], variant: str) -> list[str]:
    lines = [
        "| store | req/s | p50 | p99 | vs memory | Redis script calls (round trips) / request "
        f"| Redis commands / request | {CPU_HEADER} |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    memory = _saturated(_of(results, variant, MEMORY))
    for r in (r for r in results if r.variant == variant):
        s = r.target.saturated
        if s is None:
            continue
        if not r.valid_saturated:
            problems = Run(0, 0, 0, 0, errors=[*s.problems, *r.problems])
            lines.append(_invalid(r.store, problems, 8))
            continue
        ratio = f"{s.rps / memory.rps:.2f}x" if memory else "—"
        lines.append(
            f"| {r.store} | {s.rps:,.0f} | {s.p50_ms:.2f} ms | {s.p99_ms:.2f} ms | {ratio} | "
            f"{_round_trips(r.calls)} | {_commands(r.calls)} | {_cpu(r.target, 'saturated')} |"
        )
    return lines


def fixed_table(results: list[StoreResult], variant: str) -> list[str]:
    lines = [
        f"| store | asked req/s | got req/s | p50 | p99 | added p50 vs memory | {CPU_HEADER} |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    memory_result = _of(results, variant, MEMORY)
    memory = _valid(memory_result.target.fixed) if memory_result else None
    for r in (r for r in results if r.variant == variant):
        if (f := r.target.fixed) is None:
            continue
        if not f.valid or r.problems:
            lines.append(_invalid(r.store, Run(0, 0, 0, 0, errors=f.problems + r.problems), 7))
            continue
        added = f"{f.p50_ms - memory.p50_ms:+.2f} ms" if memory else "—"
        lines.append(
            f"| {r.store} | {f.asked_rps or 0:,.0f} | {f.rps:,.0f} | {f.p50_ms:.2f} ms | "
            f"{f.p99_ms:.2f} ms | {added} | {_cpu(r.target, 'fixed')} |"
        )
    return lines


def _round_trip_check(
    result: StoreResult | None, expected: float, label: str
) -> tuple[str, str | None, bool]:
    calls = result.calls if result and result.valid_saturated else None
    if calls is None:
        return label, None, False
    ok = abs(calls.script_calls - expected) <= _ROUND_TRIP_SLACK
    return label, f"{calls.script_calls:.3f} script calls per request", ok


def target_checks(results: list[StoreResult]) -> list[tuple[str, str | None, bool]]:
    """The issue's targets, on the shared-slot policy, for Redis and the Cluster."""
    memory = _saturated(_of(results, SHARED, MEMORY))
    checks = []
    for store in (REDIS, CLUSTER):
        result = _of(results, SHARED, store)
        run = _saturated(result)
        share = run.rps / memory.rps if run and memory else None
        checks += [
            _round_trip_check(result, ROUND_TRIPS_SHARED,
                              f"{store}: exactly one round trip per request (one slot)"),
            (f"{store}: ≥ {MIN_REDIS_RPS:,.0f} req/s on one worker",
             f"{run.rps:,.0f} req/s" if run else None, bool(run and run.rps >= MIN_REDIS_RPS)),
            (f"{store}: ≥ {MIN_SHARE_OF_MEMORY:.0%} of the memory store's req/s in the same run",
             f"{share:.0%}" if share else None, (share or 0) >= MIN_SHARE_OF_MEMORY),
        ]  # fmt: skip
    return checks


def cross_slot_checks(results: list[StoreResult]) -> list[tuple[str, str | None, bool]]:
    return [
        _round_trip_check(_of(results, CROSS, store), expected,
                          f"{store}: {expected:g} round trip(s) per request with a global limit")
        for store, expected in ROUND_TRIPS_CROSS.items()
    ]  # fmt: skip


def targets_met(results: list[StoreResult]) -> bool:
    return all(value is not None and ok for _, value, ok in target_checks(results))


def render(results: list[StoreResult], settings: list[str]) -> str:
    lines = list(settings)
    for variant in VARIANTS:
        if not any(r.variant == variant for r in results):
            continue
        lines += ["", f"### `{variant}`", "", "**Saturation** (wrk, closed loop):", ""]
        lines += saturated_table(results, variant)
        if any(r.target.fixed for r in results if r.variant == variant):
            lines += ["", "**Fixed rate**, half the slowest store's saturated req/s:", ""]
            lines += fixed_table(results, variant)
    if any(_noisy(usage) for r in results for usage in r.target.cpu.values()):
        lines += ["", f"⚠ noisy: other processes used more than {NOISY_PCT:g}% of a core "
                  "during a run marked so; its numbers are lower bounds. Repeat on a quiet "
                  "machine."]  # fmt: skip
    lines += ["", "**Issue targets** (`shared-slot`):", ""]
    lines += [_verdict(*check) for check in target_checks(results)]
    if any(r.variant == CROSS for r in results):
        lines += ["", "**Expected with a cross-slot limit** (`cross-slot`, not a target):", ""]
        lines += [_verdict(*check) for check in cross_slot_checks(results)]
    return "\n".join(lines) + "\n"
