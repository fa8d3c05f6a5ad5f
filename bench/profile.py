"""Profile the gateway under saturating load: where its one core goes, by function.

Starts the mock and the gateway as ``bench/run.py`` does (same policy, same pinning),
warms up, then samples the gateway with py-spy while wrk saturates it, and prints the
hottest functions: by self time (the leaf frame) and inclusive (anywhere on the stack),
as % of the non-idle samples of the gateway's event-loop thread. The raw collapsed
stacks can be kept for a flame graph (speedscope.app opens them as they are).

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py [--duration 10] [--native] [--out /tmp/qg.prof.txt]
    .venv/bin/python bench/profile.py --store redis      # or "redis cluster"; see stores.py

Sampling pauses the gateway for each sample (py-spy itself runs on core 1 with the
load), so it costs some throughput: the shares, not the req/s, are the result.
--nonblocking avoids the pauses but tears many asyncio stacks (frames read mid-change).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from cpu import LOAD_CORE
from loadgen import require_tools, run_wrk
from processes import Child, pinned
from run import CHAT, Bench, describe
from stores import StoresBench
from stores_report import MEMORY, SHARED, STORES, VARIANTS

OWN = "quotagate/"  # py-spy's short file names start with the package
# Start-up frames under every sample: left out of the inclusive table.
_THREAD_ROOT = "Thread._bootstrap "  # a thread started by threading, not the main one
_ENTRY = ("quotagate/__main__.py", "quotagate/cli.py", "quotagate/server.py")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="py-spy profile of the gateway under wrk load.")
    p.add_argument("--duration", type=float, default=10, help="seconds sampled under load")
    p.add_argument("--warmup", type=float, default=3, help="seconds of load before sampling")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="include C extension frames")
    p.add_argument("--nonblocking", action="store_true", help="don't pause the gateway")
    p.add_argument("--by-line", action="store_true", help="file:line of the sampled line, "
                   "not of the function's start")  # fmt: skip
    p.add_argument("--top", type=int, default=25, help="rows per table")
    p.add_argument("--out", default="", help="keep the raw collapsed stacks here")
    p.add_argument(
        "--store", choices=STORES, default=MEMORY,
        help="the limit store: run.py's memory-store gateway (default), or a private "
        "redis-server / 3-master Cluster on core 1 with stores.py's --variant policy",
    )  # fmt: skip
    p.add_argument("--variant", choices=VARIANTS, default=SHARED, help="with --store redis…")
    p.add_argument("--accounting", choices=("off", "ledger", "budget"), default="ledger",
                   help="as in run.py")  # fmt: skip
    return p.parse_args()


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("profile: py-spy missing; `.venv/bin/pip install py-spy`")
    return found


def record(args: argparse.Namespace, pid: int, out: Path) -> subprocess.Popen[bytes]:
    cmd = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
           "--duration", f"{args.duration:g}", "--rate", str(args.rate),
           *([] if args.by_line else ["--function"]),
           *(["--native"] if args.native else []),
           *(["--nonblocking"] if args.nonblocking else [])]  # fmt: skip
    return subprocess.Popen(pinned(LOAD_CORE, cmd), stdout=subprocess.DEVNULL)


def parse_stacks(raw: Path) -> tuple[Counter[str], Counter[str], int, int]:
    """Self and inclusive sample counts per frame of the event-loop thread, its total,
    and the samples of other threads (aiosqlite's worker polls its queue, which py-spy
    counts as busy: left out, so shares are of the thread that serves requests)."""
    own, inclusive, total, others = Counter[str](), Counter[str](), 0, 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        if frames[0].startswith(_THREAD_ROOT):
            others += n
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own, inclusive, total, others


def table(title: str, counts: Counter[str], total: int, top: int, only_own: bool) -> list[str]:
    rows = [
        (f, n)
        for f, n in counts.most_common()
        if not only_own or (OWN in f and not any(entry in f for entry in _ENTRY))
    ][:top]
    lines = [f"### {title}", "", "| % of samples | function (file:line) |", "|---:|---|"]
    lines += [f"| {100 * n / total:5.1f} | `{frame}` |" for frame, n in rows]
    return [*lines, ""]


def start_gateway(tmp: Path, args: argparse.Namespace, stack: ExitStack) -> tuple[Bench, Child]:
    """The mock and the gateway, with run.py's policy or on a private Redis."""
    if args.store == MEMORY:
        bench = Bench(tmp, args, stack)
        mock = bench.start_mock()
        return bench, bench.start_gateway(mock.base_url + "/v1")
    stores = StoresBench(tmp, args, stack, stores=(args.store,))
    mock = stores.bench.start_mock()
    return stores.bench, stores.start_gateway(mock, args.variant, args.store)


def main() -> int:
    args = parse_args()
    require_tools("wrk")
    with tempfile.TemporaryDirectory(prefix="qg-prof-") as tmp, ExitStack() as stack:
        bench, gateway = start_gateway(Path(tmp), args, stack)
        url = gateway.base_url + CHAT
        run_wrk(url, bench.load, args.connections, args.warmup)
        raw = Path(args.out) if args.out else Path(tmp) / "stacks.txt"
        spy = record(args, gateway.proc.pid, raw)
        result = run_wrk(url, bench.load, args.connections, args.duration)
        if spy.wait(timeout=args.duration + 30) != 0:
            raise SystemExit(f"profile: py-spy exited {spy.returncode}")
        own, inclusive, total, others = parse_stacks(raw)
    print(f"gateway under wrk -c{args.connections} while sampled: {describe(result)}")
    kept = f"; stacks kept in {raw}" if args.out else ""
    print(f"{total} samples of the event-loop thread at {args.rate}/s "
          f"({others} of other threads left out){kept}")  # fmt: skip
    print()
    print("\n".join(table("Self time, any code", own, total, args.top, False)))
    print("\n".join(table("Self time, quotagate's code", own, total, args.top, True)))
    print("\n".join(table("Inclusive, quotagate's code", inclusive, total, args.top, True)))
    return 0 if result.valid else 2


if __name__ == "__main__":
    raise SystemExit(main())
