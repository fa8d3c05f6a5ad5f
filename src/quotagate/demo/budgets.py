"""The budget scenarios: a free tenant runs out of daily tokens (402); a pro tenant is
warned past 80% of its monthly tokens before it runs out."""

from __future__ import annotations

import openai
from rich.table import Table

from .stage import Reply, Stage, status_cell, user_says

ANSWER_TOKENS = 180  # each request asks the mock for this many completion tokens
PRO_QUOTA = 2000  # the demo's pro tenant gets this monthly quota (an override)


def ask(client: openai.OpenAI, number: int) -> Reply:
    prompt = f"Request {number}: tell me a story. [[mock:tokens={ANSWER_TOKENS}]]"
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-3.5-turbo", messages=user_says(prompt), max_tokens=ANSWER_TOKENS + 20
        )
    except openai.APIStatusError as exc:
        return Reply(exc.status_code, exc.response.headers, error=exc)
    return Reply(raw.status_code, raw.headers, completion=raw.parse())


def free_tenant_runs_out(stage: Stage) -> None:
    stage.operator.create_tenant("demo-budget-free", "free")
    client = stage.client(stage.operator.create_key("demo-budget-free", "free"))
    table = Table("#", "status", "tokens used", "x-quotagate-quota-remaining-tokens")
    replies: list[Reply] = []
    for number in range(1, 8):
        reply = ask(client, number)
        replies.append(reply)
        usage = reply.completion.usage if reply.completion else None
        remaining = reply.headers.get("x-quotagate-quota-remaining-tokens", "-")
        table.add_row(
            str(number),
            status_cell(reply.status),
            str(usage.total_tokens if usage else "-"),
            remaining,
        )
        if reply.status == 402:
            break
    stage.console.print(table)
    last = replies[-1]
    if not stage.expect(last.status == 402, f"the free tenant never got a 402 ({last.status})"):
        return
    error = last.error
    body = error.body if error is not None and isinstance(error.body, dict) else {}
    stage.expect(body.get("type") == "insufficient_quota", f"402 type was {body.get('type')!r}")
    stage.expect(last.headers.get("x-should-retry") == "false", "402 without x-should-retry")
    stage.console.print(f"[bold]402[/bold] {body.get('code')}: {body.get('message')}")


def pro_tenant_is_warned(stage: Stage) -> None:
    stage.operator.create_tenant("demo-budget-pro", "pro")
    stage.operator.run(
        "credits", "add", "demo-budget-pro", "--tokens", str(PRO_QUOTA), "--kind", "override"
    )
    client = stage.client(stage.operator.create_key("demo-budget-pro", "pro"))
    table = Table("#", "status", "remaining tokens", "x-quotagate-quota-warning")
    warned = None
    for number in range(1, 12):
        reply = ask(client, number)
        warning = reply.headers.get("x-quotagate-quota-warning", "")
        table.add_row(
            str(number),
            status_cell(reply.status),
            reply.headers.get("x-quotagate-quota-remaining-tokens", "-"),
            warning.split(";")[4].strip() if warning else "",
        )
        if warning:
            warned = number
            break
    stage.console.print(table)
    stage.expect(warned is not None, "the pro tenant was never warned past 80%")
