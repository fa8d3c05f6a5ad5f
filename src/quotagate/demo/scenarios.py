"""The demo's scenarios, played in the order of ``SCENARIOS`` at the bottom.

A later issue adds its scenario by writing one function of a ``Stage`` (here or in a
module of its own) and appending a ``Scenario`` to that list.
"""

from __future__ import annotations

import time

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .budgets import PRO_QUOTA, free_tenant_runs_out, pro_tenant_is_warned
from .outage import region_outage
from .spike import traffic_spike
from .stage import (
    Reply,
    Scenario,
    Stage,
    chat,
    first_words,
    live_view,
    status_cell,
    user_says,
)

FREE_LIMIT = 10  # the bundled policy's free plan: 10 requests per minute per key
STREAM_TOKENS = 40


def every_client_gets_a_key(stage: Stage) -> None:
    table = Table("plan", "model", "status", "requests/min", "answer")
    for plan, account in stage.accounts.items():
        reply = chat(stage.client(account), "gpt-3.5-turbo", f"Hello from the {plan} plan")
        limit = reply.headers.get("x-ratelimit-limit-requests", "-")
        answer = first_words(reply.answer)
        table.add_row(plan, "gpt-3.5-turbo", status_cell(reply.status), limit, answer)
        stage.expect(reply.status == 200, f"the {plan} key got {reply.status}, expected 200")
    stage.console.print(table)


def free_key_rate_limit(stage: Stage) -> None:
    account = stage.operator.create_key("demo-free", "free")
    client = stage.client(account)
    table = Table("#", "status", "x-ratelimit-remaining-requests", "retry-after")
    replies: list[Reply] = []
    with live_view(stage.console, table):
        for number in range(1, FREE_LIMIT + 3):
            reply = chat(client, "gpt-3.5-turbo", f"Request number {number}")
            replies.append(reply)
            remaining = reply.headers.get("x-ratelimit-remaining-requests", "-")
            retry_after = reply.headers.get("retry-after", "")
            table.add_row(str(number), status_cell(reply.status), remaining, retry_after)
    _expect_limited_after(stage, replies, FREE_LIMIT)


def _expect_limited_after(stage: Stage, replies: list[Reply], allowed: int) -> None:
    statuses = [reply.status for reply in replies]
    expected = [200] * allowed + [429] * (len(replies) - allowed)
    if not stage.expect(statuses == expected, f"statuses were {statuses}, not {expected}"):
        return
    retry_after = replies[allowed].headers.get("retry-after", "")
    if stage.expect(retry_after.isdigit() and int(retry_after) >= 1, "429 without Retry-After"):
        stage.console.print(
            f"Request {allowed + 1} was refused with [bold]429[/bold] and "
            f"[bold]Retry-After: {retry_after}[/bold] (seconds): {allowed} a minute "
            f"earns the key one request back every {60 / allowed:g} s."
        )


def plans_decide_models(stage: Stage) -> None:
    table = Table("plan", "model", "status", "answer or error")
    for plan, expected in (("free", 403), ("pro", 200)):
        reply = chat(stage.client(plan), "gpt-4", "Which model are you?")
        table.add_row(plan, "gpt-4", status_cell(reply.status), first_words(reply.answer, 12))
        stage.expect(reply.status == expected, f"{plan} asking gpt-4 got {reply.status}")
        if expected == 403:
            code = reply.error.code if reply.error else None
            stage.expect(code == "model_not_allowed", f"403 code was {code!r}")
        elif reply.completion is not None:
            model = reply.completion.model
            stage.expect(model == "gpt-4", f"the pro key was answered by {model!r}")
    stage.console.print(table)


def streaming_passes_through(stage: Stage) -> None:
    prompt = f"Tell me about rate limits. [[mock:tokens={STREAM_TOKENS}]]"
    client = stage.client("pro")
    text, chunks, first_at, finish = Text(), 0, 0.0, None
    panel = Panel(
        text, title="pro · gpt-3.5-turbo · stream=True", width=min(72, stage.console.width)
    )
    started = time.perf_counter()
    with (
        live_view(stage.console, panel) as live,
        client.chat.completions.create(
            model="gpt-3.5-turbo", messages=user_says(prompt), stream=True
        ) as stream,
    ):
        for chunk in stream:
            chunks += 1
            first_at = first_at or time.perf_counter() - started
            if chunk.choices and (delta := chunk.choices[0].delta.content):
                text.append(delta)
                live.refresh()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    total = time.perf_counter() - started
    stage.console.print(
        f"{chunks} chunks; first after {first_at * 1000:.0f} ms, last after "
        f"{total * 1000:.0f} ms; finish_reason={finish}"
    )
    # One chunk per token from the mock; a gateway that buffered would deliver one.
    stage.expect(chunks > STREAM_TOKENS // 2, f"only {chunks} chunks arrived")
    stage.expect(finish == "stop", f"the stream ended with finish_reason={finish}")


SCENARIOS: list[Scenario] = [
    Scenario(
        "Every client gets a key",
        "One tenant per plan, one key each; every key gets an answer from the mock LLM.",
        every_client_gets_a_key,
    ),
    Scenario(
        "10 requests per minute on a free key",
        "A fresh free key sends 12 requests in a row: 10 pass, the 11th and 12th get 429 "
        "with Retry-After. Limits count per key, so this key starts with all 10.",
        free_key_rate_limit,
    ),
    Scenario(
        "Plans decide models",
        "The free plan does not include gpt-4: the gateway refuses it with 403 before "
        "any upstream is called. The pro plan does include it.",
        plans_decide_models,
    ),
    Scenario(
        "Streaming passes through",
        f"A pro key streams a {STREAM_TOKENS}-token answer; the deltas are shown as they "
        "arrive. The mock answers instantly, so it is quick.",
        streaming_passes_through,
    ),
    Scenario(
        "A free tenant runs out of daily tokens",
        "The free plan has 1,000 gpt-3.5-turbo tokens a day. Each request reserves what it "
        "may use, is charged what it used, and once the day's tokens are gone the next one "
        "gets 402 insufficient_quota, which the SDK does not retry.",
        free_tenant_runs_out,
    ),
    Scenario(
        "A pro tenant is warned at 80%",
        f"An operator override gives a pro tenant {PRO_QUOTA:,} tokens this month; past 80% "
        "every response carries x-quotagate-quota-warning (and an alert webhook fires once, "
        "when one is configured).",
        pro_tenant_is_warned,
    ),
    Scenario(
        "Enterprise first during a traffic spike",
        "The mock LLM is made small: 4 requests at once, 100 ms each. Four pro keys send "
        "100 requests a second while an enterprise key sends 5: requests beyond the "
        "deployment's 8 slots queue by plan priority (one slot kept for enterprise); pro "
        "requests that wait over a second are shed with 503, every enterprise request is "
        "served.",
        traffic_spike,
    ),
    Scenario(
        "A region goes down, then the other",
        "gpt-4 runs in eu-west (this gateway's region) and us-east. The demo stops the "
        "eu-west upstream: requests move to us-east. Then it stops us-east: gpt-4 falls "
        "back to gpt-3.5-turbo, billed at its price. The client never sees an error.",
        region_outage,
    ),
]
