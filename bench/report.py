"""The benchmark's report: the markdown tables, the issue's targets, bench/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cpu import NOISY_PCT
from loadgen import Run

# The targets for the core path with the in-memory store, one worker.
MIN_GATEWAY_RPS = 4000.0
MIN_SHARE_OF_PASSTHROUGH = 0.5
MAX_ADDED_P50_MS = 1.0

DIRECT, PASSTHROUGH, GATEWAY = "direct upstream", "bare pass-through", "gateway"
CPU_HEADER = "CPU, % of a core (other: core 0 / core 1)"
RESULTS_START = "<!-- bench:results:start -->"
RESULTS_END = "<!-- bench:results:end -->"


@dataclass
class Target:
    name: str
    saturated: Run | None = None
    fixed: Run | None = None
    # process name -> % of one core during the measured run, for each kind of run
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


def _ratio(a: Run | None, b: Run | None) -> str:
    if a is None or b is None or not (a.valid and b.valid):
        return "—"
    return f"{a.rps / b.rps:.2f}x"


def _added(a: Run | None, b: Run | None) -> str:
    if a is None or b is None or not (a.valid and b.valid):
        return "—"
    return f"{a.p50_ms - b.p50_ms:+.2f} ms"


def _noisy(usage: dict[str, float]) -> bool:
    return any(pct > NOISY_PCT for name, pct in usage.items() if name.startswith("other"))


def _cpu(target: Target, kind: str) -> str:
    usage = target.cpu.get(kind, {})
    if not usage:
        return "—"
    ours = ", ".join(f"{n} {pct:.0f}%" for n, pct in usage.items() if not n.startswith("other"))
    other = " / ".join(f"{pct:.0f}%" for n, pct in usage.items() if n.startswith("other"))
    return f"{ours}; other {other}" + (" ⚠ noisy" if _noisy(usage) else "")


def _invalid(name: str, run: Run, columns: int) -> str:
    return f"| {name} | **INVALID: {'; '.join(run.problems)}** |" + " |" * (columns - 2)


def saturated_table(targets: dict[str, Target]) -> list[str]:
    lines = [
        f"| target | req/s | p50 | p99 | vs pass-through | vs direct | {CPU_HEADER} |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    bare, direct = targets[PASSTHROUGH].saturated, targets[DIRECT].saturated
    for t in targets.values():
        if (s := t.saturated) is None:
            continue
        if not s.valid:
            lines.append(_invalid(t.name, s, 7))
            continue
        lines.append(
            f"| {t.name} | {s.rps:,.0f} | {s.p50_ms:.2f} ms | {s.p99_ms:.2f} ms | "
            f"{_ratio(s, bare)} | {_ratio(s, direct)} | {_cpu(t, 'saturated')} |"
        )
    return lines


def fixed_table(targets: dict[str, Target]) -> list[str]:
    lines = [
        "| target | asked req/s | got req/s | p50 | p99 | added p50 vs direct "
        f"| added p50 vs pass-through | {CPU_HEADER} |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    direct, bare = targets[DIRECT].fixed, targets[PASSTHROUGH].fixed
    for t in targets.values():
        if (f := t.fixed) is None:
            continue
        if not f.valid:
            lines.append(_invalid(t.name, f, 8))
            continue
        lines.append(
            f"| {t.name} | {f.asked_rps or 0:,.0f} | {f.rps:,.0f} | {f.p50_ms:.2f} ms | "
            f"{f.p99_ms:.2f} ms | {_added(f, direct)} | {_added(f, bare)} | {_cpu(t, 'fixed')} |"
        )
    return lines


def _verdict(label: str, value: str | None, ok: bool) -> str:
    if value is None:
        return f"- {label}: not assessed (its run was invalid or skipped)"
    return f"- {label} ({value}): {'**met**' if ok else '**NOT met**'}"


def verdicts(targets: dict[str, Target]) -> tuple[list[str], bool]:
    """The issue's targets, each met / not met / not assessed; and whether all are met."""
    gw = _valid(targets[GATEWAY].saturated)
    bare = _valid(targets[PASSTHROUGH].saturated)
    gw_fixed, direct_fixed = _valid(targets[GATEWAY].fixed), _valid(targets[DIRECT].fixed)
    share = gw.rps / bare.rps if gw and bare else None
    added = gw_fixed.p50_ms - direct_fixed.p50_ms if gw_fixed and direct_fixed else None
    checks = [
        (f"gateway ≥ {MIN_GATEWAY_RPS:,.0f} req/s on one worker",
         f"{gw.rps:,.0f} req/s" if gw else None, bool(gw and gw.rps >= MIN_GATEWAY_RPS)),
        (f"gateway ≥ {MIN_SHARE_OF_PASSTHROUGH:.0%} of the bare pass-through's req/s",
         f"{share:.0%}" if share else None, (share or 0) >= MIN_SHARE_OF_PASSTHROUGH),
        (f"p50 added latency ≤ {MAX_ADDED_P50_MS:g} ms at half the gateway's req/s",
         f"{added:+.2f} ms" if added is not None else None,
         added is not None and added <= MAX_ADDED_P50_MS),
    ]  # fmt: skip
    lines = [_verdict(label, value, ok) for label, value, ok in checks]
    return lines, all(value is not None and ok for _, value, ok in checks)


def _valid(run: Run | None) -> Run | None:
    return run if run is not None and run.valid else None


def render(targets: dict[str, Target], settings: list[str]) -> str:
    lines = [*settings, "", "**Saturation** (wrk, closed loop):", ""]
    lines += saturated_table(targets)
    if any(t.fixed for t in targets.values()):
        lines += ["", "**Fixed rate**, half the gateway's saturated req/s:", ""]
        lines += fixed_table(targets)
    if any(_noisy(usage) for t in targets.values() for usage in t.cpu.values()):
        lines += ["", f"⚠ noisy: other processes used more than {NOISY_PCT:g}% of a core "
                  "during a run marked so; its numbers are lower bounds. Repeat on a quiet "
                  "machine."]  # fmt: skip
    checks, _ = verdicts(targets)
    return "\n".join([*lines, "", "**Issue targets:**", "", *checks]) + "\n"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}"


def git_commit(repo: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--", "src") else "")


def record_section(section: str, title: str, command: str, body: str) -> None:
    """Keep ``body`` as the ``section`` part of bench/RESULTS.md, between
    ``<!-- bench:<section>:start -->`` and ``<!-- bench:<section>:end -->``."""
    repo = Path(__file__).resolve().parent.parent
    markers = (f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->")
    write_results(repo / "bench" / "RESULTS.md", command, body, repo, markers, title)


def write_results(
    path: Path, command: str, body: str, repo: Path,
    markers: tuple[str, str] = (RESULTS_START, RESULTS_END), title: str = "Latest run",
) -> None:  # fmt: skip
    """Replace the results section of ``path`` between ``markers``, or add one (each
    benchmark has its own section; the others are kept)."""
    start, end = markers
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join([
        start,
        f"## {title}",
        "",
        f"- Date: {when}",
        f"- Machine: {machine()}",
        f"- Commit: {git_commit(repo)}",
        f"- Command: `{command}`",
        "",
        body.rstrip(),
        end,
    ])  # fmt: skip
    text = path.read_text() if path.exists() else _RESULTS_HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


_RESULTS_HEADER = """# Benchmark results

Written by `bench/run.py --write` and `bench/stores.py --write` (see bench/README.md
for what each number means). Each section between its markers is replaced by its own
benchmark's next run; notes outside them are kept.
A single run on a shared machine: a guide, not a record.
"""
