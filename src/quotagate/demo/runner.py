"""``run_demo``: start the stack, provision accounts, play every scenario, clean up.

The demo doubles as a smoke test: it exits non-zero, naming the scenario, when any
expectation is not met, and it always stops what it started (also on Ctrl-C).
"""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from .accounts import Operator, OperatorError, accounts_table, provision
from .stack import Stack, StackError

if TYPE_CHECKING:
    from .stage import Scenario, Stage

Outcome = tuple[str, list[str]]  # a scenario's title and its unmet expectations
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def run_demo() -> int:
    console = Console()
    try:  # the scenarios talk through the openai SDK, a dev extra
        from .scenarios import SCENARIOS
    except ModuleNotFoundError as exc:
        if exc.name != "openai":
            raise
        console.print("[red]The demo needs the openai SDK:[/red] pip install openai")
        return 2
    with tempfile.TemporaryDirectory(prefix="quotagate-demo-") as tmp:
        return _run_in(console, Stack(Path(tmp)), SCENARIOS)


def _run_in(console: Console, stack: Stack, scenarios: Sequence[Scenario]) -> int:
    try:
        with _sigterm_interrupts():
            return _play_all(console, stack, scenarios)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]")
        return 130
    except (StackError, OperatorError) as exc:
        console.print("[red]The demo could not set up:[/red]")
        console.print(str(exc), markup=False, highlight=False)
        return 1
    finally:
        with _signals_ignored(), console.status("stopping the gateway and its mock LLM…"):
            stack.stop()
        console.print("Stopped the gateway and its mock LLM.")


def _play_all(console: Console, stack: Stack, scenarios: Sequence[Scenario]) -> int:
    from .stage import Stage  # lazily, as it imports openai: see run_demo

    console.print(Rule("[bold]quotagate demo[/bold]"))
    with console.status("starting the gateway (bundled policy) and its mock LLM…"):
        stack.start()
    console.print(f"gateway:  {stack.gateway_url}  (quotagate serve, bundled policy)")
    console.print(f"mock LLM: {stack.mock_url}  (the upstream, started by the gateway)")
    console.print(f"data dir: {stack.data_dir}  (temporary, removed at exit)", highlight=False)
    operator = Operator(stack.env, console)
    regions = {r: f"http://127.0.0.1:{port}" for r, port in stack.region_ports.items()}
    stage = Stage(
        console, stack.gateway_url, provision(operator), operator, regions=regions,
        mock=stack.mock_url,
    )  # fmt: skip
    console.print(accounts_table(stage.accounts))
    outcomes = [_play_one(stage, number, s) for number, s in enumerate(scenarios, start=1)]
    return _summarise(console, stack, outcomes)


def _play_one(stage: Stage, number: int, scenario: Scenario) -> Outcome:
    import openai  # lazily: see run_demo

    stage.console.print()
    stage.console.print(Rule(f"[bold]{number}. {scenario.title}[/bold]", align="left"))
    stage.console.print(scenario.explanation, style="dim")
    stage.failures.clear()
    try:
        scenario.play(stage)
    except (openai.OpenAIError, OperatorError) as exc:
        stage.failures.append(f"{type(exc).__name__}: {exc}")
    for failure in stage.failures:
        stage.console.print(f"[red]✗ {failure}[/red]", highlight=False)
    if not stage.failures:
        stage.console.print("[green]✓ as expected[/green]")
    return scenario.title, list(stage.failures)


def _summarise(console: Console, stack: Stack, outcomes: list[Outcome]) -> int:
    table = Table("#", "scenario", "result", title="Summary")
    for number, (title, failures) in enumerate(outcomes, start=1):
        result = f"[red]✗ {failures[0]}[/red]" if failures else "[green]✓ passed[/green]"
        table.add_row(str(number), title, result)
    console.print()
    console.print(table)
    failed = [title for title, failures in outcomes if failures]
    if failed:
        console.print(f"[red]Failed:[/red] {', '.join(failed)}. The gateway's log ends:")
        console.print(stack.log_tail(lines=30), markup=False, highlight=False, style="dim")
        return 1
    console.print(f"[green]All {len(outcomes)} scenarios behaved as expected.[/green]")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the gateway is stopped on either."""
    with _handling({signal.SIGTERM: _raise_interrupt}):
        yield


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """An impatient second Ctrl-C must not leave the gateway running."""
    with _handling({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
        yield


@contextmanager
def _handling(handlers: dict[signal.Signals, SignalHandler]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
