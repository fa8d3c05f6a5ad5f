"""What a scenario is handed, and the small helpers every scenario uses.

A scenario is a titled function of a ``Stage``: it talks to the gateway through the
official ``openai`` SDK, shows what happened, and records each expectation with
``stage.expect``; the runner marks the scenario failed if any was not met.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from rich.console import Console, RenderableType
from rich.live import Live

from .accounts import Account, Operator

CLIENT_TIMEOUT = 30.0


@dataclass(slots=True)
class Stage:
    console: Console
    gateway_url: str
    accounts: dict[str, Account]
    operator: Operator
    failures: list[str] = field(default_factory=list)
    regions: dict[str, str] = field(default_factory=dict)  # gpt-4's mock per region
    mock: str = ""  # the main mock LLM (gpt-3.5-turbo)

    def client(self, account: Account | str) -> openai.OpenAI:
        """An SDK client on ``account`` (or the plan's demo account); no SDK retries,
        so every 429 is shown as the gateway sent it."""
        if isinstance(account, str):
            account = self.accounts[account]
        return openai.OpenAI(
            base_url=self.gateway_url + "/v1",
            api_key=account.key,
            max_retries=0,
            timeout=CLIENT_TIMEOUT,
        )

    def expect(self, met: bool, expectation: str) -> bool:
        if not met:
            self.failures.append(expectation)
        return met


@dataclass(frozen=True, slots=True)
class Scenario:
    title: str
    explanation: str
    play: Callable[[Stage], None]


@dataclass(frozen=True, slots=True)
class Reply:
    """One chat completion's outcome, success or error, with its headers."""

    status: int
    headers: Mapping[str, str]
    completion: ChatCompletion | None = None
    error: openai.APIStatusError | None = None

    @property
    def answer(self) -> str:
        if self.completion is not None:
            return self.completion.choices[0].message.content or ""
        if self.error is None:
            return ""
        body = self.error.body  # the error object; its message lacks the SDK's prefix
        message = body.get("message") if isinstance(body, dict) else None
        return f"{self.error.code}: {message or self.error.message}"


def chat(client: openai.OpenAI, model: str, prompt: str) -> Reply:
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=user_says(prompt)
        )
    except openai.APIStatusError as exc:  # RateLimitError, PermissionDeniedError, ...
        return Reply(exc.status_code, exc.response.headers, error=exc)
    return Reply(raw.status_code, raw.headers, completion=raw.parse())


@contextmanager
def live_view(console: Console, renderable: RenderableType) -> Iterator[Live]:
    """A live display that also ends its line when the output is not a terminal."""
    with Live(renderable, console=console, refresh_per_second=30) as live:
        yield live
    if not console.is_terminal:  # rich only ends the line itself on a terminal
        console.line()


def user_says(prompt: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": prompt}]


def status_cell(status: int) -> str:
    colour = "green" if status < 400 else "yellow" if status in (403, 429) else "red"
    return f"[{colour}]{status}[/{colour}]"


def first_words(text: str, count: int = 7) -> str:
    words = text.split()
    return " ".join(words[:count]) + (" …" if len(words) > count else "")
