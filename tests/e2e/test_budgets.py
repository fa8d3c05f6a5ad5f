"""Token quotas and money budgets, end to end: reserve, settle, 402, degrade, credits.

A real gateway process fronts the mock LLM; the official ``openai`` SDK is the client.
Every scenario opens its own tenant (quotas count per tenant), so tests share one
gateway without sharing counters. What the gateway charged is read back three ways:
the response headers, the upstream's ``usage`` and the ``qg_ledger`` rows.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import openai
import pytest
from e2e_clients import (
    CHAT_MODEL,
    TIMEOUT,
    MockUpstream,
    assert_error_response,
    messages,
    poll_until_raises,
    sdk,
)
from openai.types.chat import ChatCompletion

from harness import Gateway, policy

GPT4 = "gpt-4"
# Takes max_completion_tokens only: the mock refuses its max_tokens, as OpenAI does.
REASONING = "o3-mini"
DEFAULT_CAP = 64  # plans.capless.default_max_tokens
FREE_TOKENS = 1000
GPT4_DAILY = 500
PRO_BUDGET = 100_000  # micro-units: 0.10 USD
SMALL_BUDGET = 10_000  # 0.01 USD
PRICES = {  # µ per 1M input / output tokens
    CHAT_MODEL: (500_000, 1_500_000), GPT4: (30_000_000, 60_000_000),
    REASONING: (1_100_000, 4_400_000),
}  # fmt: skip
CREDIT_DEADLINE = 5.0  # key_cache_ttl is 200ms: a credit shows well within this
MONEY = re.compile(r"^\d+\.\d{6}$")

T = TypeVar("T")


def budget_policy(upstream: str, **overrides: Any) -> dict[str, Any]:
    doc = policy(upstream, **overrides)
    both = [CHAT_MODEL, GPT4]
    doc["models"][REASONING] = {
        "price": {"input_per_1m": 1.1, "output_per_1m": 4.4},
        "deployments": [{"url": upstream}],
        "max_tokens_field": "max_completion_tokens",
    }
    doc["plans"]["free"] = {
        "models": [CHAT_MODEL],
        "quotas": [{"scope": "tenant", "model": CHAT_MODEL, "tokens": FREE_TOKENS, "per": "day"}],
    }
    doc["plans"]["pro"] = {
        "models": both,
        "budget": {"amount": PRO_BUDGET / 1e6, "currency": "USD", "per": "month",
                   "alerts": [0.8, 0.9], "on_exhausted": "reject"},
    }  # fmt: skip
    doc["plans"]["paid"] = {
        "models": both,
        "limits": [{"scope": "key", "tokens": 40000, "per": "1m"}],
        "quotas": [
            {"scope": "tenant", "model": GPT4, "tokens": GPT4_DAILY, "per": "day"},
            {"scope": "user", "tokens": 1_000_000, "per": "month"},
        ],
    }
    doc["plans"]["fallback"] = {
        "models": both,
        "budget": {"amount": SMALL_BUDGET / 1e6, "on_exhausted": {"fallback": CHAT_MODEL}},
    }
    doc["plans"]["clamp"] = {
        "models": [CHAT_MODEL],
        "quotas": [{"scope": "tenant", "tokens": 500, "per": "day", "on_exhausted": "clamp"}],
        "clamp_min_tokens": 16,
    }
    doc["plans"]["clamp-budget"] = {
        "models": [GPT4],
        "budget": {"amount": SMALL_BUDGET / 1e6, "on_exhausted": "clamp"},
        "clamp_min_tokens": 16,
    }
    doc["plans"]["requests"] = {
        "models": [CHAT_MODEL],
        "quotas": [{"scope": "tenant", "requests": 3, "per": "day"}],
    }
    doc["plans"]["capless"] = {  # its requests name no max_tokens
        "models": [CHAT_MODEL, REASONING],
        "default_max_tokens": DEFAULT_CAP,
        "budget": {"amount": 1.0, "per": "month"},
    }
    doc["plans"]["capless-clamp"] = {
        "models": [CHAT_MODEL, REASONING],
        "quotas": [{"scope": "tenant", "tokens": 50, "per": "day", "on_exhausted": "clamp"}],
        "clamp_min_tokens": 16,
    }
    doc["plans"]["zoned"] = {
        "models": [CHAT_MODEL],
        "quotas": [{"scope": "tenant", "tokens": FREE_TOKENS, "per": "day"}],
        "budget": {"amount": 1.0, "per": "month"},
    }
    return doc


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("budgets"), budget_policy(upstream)).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def compat_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    """``accounting.exhausted_status: 429`` for clients that only know rate limits."""
    doc = budget_policy(upstream, accounting={"exhausted_status": 429})
    gw = Gateway(tmp_path_factory.mktemp("budgets-429"), doc).start()
    yield gw
    gw.stop()


# --- accounts, requests and what came back ----------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    tenant_id: str
    key_id: str
    key: str


_serial = itertools.count()


def open_account(gw: Gateway, plan: str, *options: str) -> Account:
    """A new tenant on ``plan`` (quotas are per tenant) and a key for it, via the CLI."""
    name = f"{plan}-{next(_serial)}"
    tenant = json.loads(gw.cli("tenants", "create", name, "--plan", plan, *options, "--json"))
    key = json.loads(gw.cli("keys", "create", "--tenant", name, "--json"))
    return Account(name, tenant["id"], key["key_id"], key["key"])


Raw = Any  # the SDK's raw response: .headers, .parse()


def ask(
    client: openai.OpenAI, tokens: int, max_tokens: int, model: str = CHAT_MODEL, text: str = "hi"
) -> Raw:
    """A chat request the mock answers with exactly ``tokens`` completion tokens (capped by
    max_tokens). The count is zero-padded so prompts differ in nothing but digits: the
    gateway's prompt estimate and the mock's prompt count are the same for all of them."""
    prompt = f"[[mock:tokens={tokens:04d}]] {text}"
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages(prompt), max_tokens=max_tokens
    )


def answer(raw: Raw) -> ChatCompletion:
    parsed = raw.parse()
    assert isinstance(parsed, ChatCompletion)
    return parsed


def total(raw: Raw) -> int:
    usage = answer(raw).usage
    assert usage is not None
    return usage.total_tokens


def remaining(raw: Raw) -> int:
    return int(raw.headers["x-quotagate-quota-remaining-tokens"])


def micros(text: str) -> int:
    """A money header ("0.099915") in micro-units; it must have exactly 6 decimals."""
    assert MONEY.match(text), text
    return int(Decimal(text) * 1_000_000)


def budget_left(raw: Raw) -> int:
    return micros(raw.headers["x-quotagate-budget-remaining"])


def cost(raw: Raw, model: str) -> int:
    """What the answer's usage costs at ``model``'s price, rounded up to a micro-unit."""
    usage = answer(raw).usage
    assert usage is not None
    inp, out = PRICES[model]
    return -(-(usage.prompt_tokens * inp + usage.completion_tokens * out) // 1_000_000)


def money(value: int) -> str:
    return f"{value // 1_000_000}.{value % 1_000_000:06d}"


def period_end(period: str, tz: str = "UTC", anchor: int = 1) -> set[str]:
    """When the current period ends, as the gateway writes it; both readings if the
    period turns over while the test runs."""
    from quotagate.limits.calendar import candidate_periods

    ends = set()
    for at in (time.time(), time.time() + 5):
        end = candidate_periods(at, period, ZoneInfo(tz), anchor)[1]  # type: ignore[arg-type]
        ends.add(datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z"))
    return ends


def refused(call: Callable[[], object]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def ledger_through(gw: Gateway, key_id: str, request_id: str, within: float = 5.0) -> list[dict]:
    """The key's ledger rows once the row of ``request_id`` is written. The writer keeps
    submission order, so every earlier request of the key is in by then."""
    deadline = time.monotonic() + within
    while True:
        with closing(sqlite3.connect(gw.tmp / "qg.db", timeout=5)) as db:
            db.row_factory = sqlite3.Row
            rows = [
                dict(r)
                for r in db.execute(
                    "SELECT * FROM qg_ledger WHERE key_id = ? ORDER BY created_at", (key_id,)
                )
            ]
        if any(r["request_id"] == request_id for r in rows):
            return rows
        assert time.monotonic() < deadline, f"{request_id} not in the ledger after {within}s"
        time.sleep(0.05)  # poll interval, not a wait for the outcome


def poll(call: Callable[[], T], done: Callable[[T], bool], within: float = CREDIT_DEADLINE) -> T:
    deadline = time.monotonic() + within
    while True:
        value = call()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"condition not met within {within}s: {value!r}"
        time.sleep(0.1)  # poll interval (each poll spends a few tokens), not a wait


def counting_client(gw: Gateway, key: str) -> tuple[openai.OpenAI, list[object]]:
    """The SDK as users run it (default retries), counting every HTTP attempt it makes."""
    attempts: list[object] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [attempts.append]})
    client = openai.OpenAI(
        base_url=f"{gw.base_url}/v1", api_key=key, timeout=TIMEOUT, http_client=http
    )
    assert client.max_retries == 2  # the SDK's default: it would retry a 429 twice
    return client, attempts


# --- the seed scenario ---------------------------------------------------------------------


def test_free_tokens_are_settled_to_usage_then_refused_with_402(gateway: Gateway) -> None:
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    resets = period_end("day")
    answers: list[Raw] = []
    with pytest.raises(openai.APIStatusError) as info:
        for _ in range(40):
            answers.append(ask(client, tokens=30, max_tokens=200))
    usages = [total(a) for a in answers]
    left = [remaining(a) for a in answers]
    for raw in answers:
        assert raw.headers["x-quotagate-quota-limit-tokens"] == str(FREE_TOKENS)
        assert raw.headers["x-quotagate-quota-reset-tokens"] in resets
    # Each response counts the earlier answers at their usage and its own reservation;
    # so from one response to the next, what remains drops by exactly one usage.
    reserved = FREE_TOKENS - left[0]
    assert reserved > 200 > usages[0]  # prompt estimate + max_tokens, settled to ~50
    assert [a - b for a, b in itertools.pairwise(left)] == usages[:-1]
    assert len(answers) >= 10
    # Refused only once the next reservation no longer fits.
    assert FREE_TOKENS - sum(usages) < reserved <= FREE_TOKENS - sum(usages[:-1])

    exc = info.value
    code = "free.tenant-tokens-day-gpt-3.5-turbo"
    assert type(exc) is openai.APIStatusError and exc.status_code == 402
    error = assert_error_response(exc.response, 402, code)
    assert error["type"] == "insufficient_quota" and error["param"] is None
    headers = exc.response.headers
    assert headers["x-should-retry"] == "false"
    assert headers["x-quotagate-quota-reset"] in resets
    message = error["message"]
    assert f"limit {FREE_TOKENS}" in message and f"used {sum(usages)}" in message, message
    assert f"resets at {headers['x-quotagate-quota-reset']}" in message, message

    rows = ledger_through(gateway, account.key_id, headers["x-request-id"])
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == len(answers) + 1
    for raw in answers:
        row = by_id[raw.headers["x-request-id"]]
        usage = answer(raw).usage
        assert usage is not None
        assert (row["status"], row["http_status"], row["model"]) == ("ok", 200, CHAT_MODEL)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert row["reserved_tokens"] == reserved
        assert row["cost_micros"] == cost(raw, CHAT_MODEL)
        assert row["tenant_id"] == account.tenant_id
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == sum(usages)
    denied = by_id[headers["x-request-id"]]
    assert (denied["status"], denied["http_status"], denied["denial_reason"]) == (
        "denied",
        402,
        code,
    )
    assert denied["prompt_tokens"] == denied["completion_tokens"] == denied["cost_micros"] == 0


@pytest.mark.parametrize(
    ("plan", "model", "max_tokens", "whole"),
    [
        ("free", CHAT_MODEL, FREE_TOKENS + 1, f"daily tokens quota (free.tenant-tokens-day-"
         f"{CHAT_MODEL}) of {FREE_TOKENS} tokens"),
        ("pro", GPT4, 2000, f"monthly budget (pro.budget-month) of {money(PRO_BUDGET)} USD"),
    ],
    ids=["tokens", "money"],
)  # fmt: skip
def test_a_request_larger_than_the_whole_quota_is_a_400_not_an_exhausted_quota(
    gateway: Gateway, mock: MockUpstream, plan: str, model: str, max_tokens: int, whole: str
) -> None:
    """It used to be a 402 "exceeded … used 0": wrong (nothing was used) and no help
    (no reset would let it through). Nothing is sent upstream; a smaller request passes."""
    account = open_account(gateway, plan)
    client = sdk(gateway, account.key)
    forwarded = mock.requests_seen()
    exc = refused(lambda: ask(client, 10, max_tokens, model=model))
    error = assert_error_response(exc.response, 400, "request_too_large")
    assert (error["type"], error["param"]) == ("invalid_request_error", "max_tokens")
    assert f"more than your whole {whole}. Lower max_tokens" in error["message"]
    # What it may use, and what that is made of (the estimate and the cap asked for).
    may = "use up to" if plan == "free" else "cost up to"
    assert error["message"].startswith(f"This request may {may} "), error["message"]
    assert f" + max_tokens {max_tokens}), more than" in error["message"], error["message"]
    if plan == "free":  # no max_tokens: the plan's default_max_tokens (1024) is too large
        bare = refused(lambda: client.chat.completions.create(model=model, messages=messages("hi")))
        error = assert_error_response(bare.response, 400, "request_too_large")
        assert " + max_tokens 1024), more than your whole" in error["message"], error["message"]
    assert mock.requests_seen() == forwarded
    fits = ask(client, 10, 20, model=model)
    row, *rest = ledger_through(gateway, account.key_id, fits.headers["x-request-id"])
    assert len(rest) == (2 if plan == "free" else 1)  # the bare one, and the one that fits
    assert (row["status"], row["http_status"], row["denial_reason"]) == (
        "denied", 400, "request_too_large",
    )  # fmt: skip
    assert row["prompt_tokens"] == row["completion_tokens"] == row["cost_micros"] == 0


def test_the_sdk_raises_on_402_and_does_not_retry(gateway: Gateway, mock: MockUpstream) -> None:
    account = open_account(gateway, "free")
    client, attempts = counting_client(gateway, account.key)
    spent = client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("[[mock:tokens=900]] spend"), max_tokens=950
    )
    assert spent.usage is not None and spent.usage.total_tokens > 900
    forwarded = mock.requests_seen()
    attempts.clear()
    exc = refused(
        lambda: client.chat.completions.create(
            model=CHAT_MODEL, messages=messages("one more"), max_tokens=100
        )
    )
    assert len(attempts) == 1  # no retry
    assert exc.status_code == 402 and not isinstance(exc, openai.RateLimitError)
    assert isinstance(exc.body, dict) and exc.body["type"] == "insufficient_quota"
    assert exc.type == "insufficient_quota"
    assert exc.code == "free.tenant-tokens-day-gpt-3.5-turbo"
    assert exc.response.json()["error"]["type"] == "insufficient_quota"
    assert mock.requests_seen() == forwarded  # refused before the upstream
    rows = ledger_through(gateway, account.key_id, exc.response.headers["x-request-id"])
    assert [r["http_status"] for r in rows] == [200, 402]  # the gateway saw it once


def test_exhausted_status_429_is_insufficient_quota_and_not_retried(
    compat_gateway: Gateway,
) -> None:
    account = open_account(compat_gateway, "free")
    client, attempts = counting_client(compat_gateway, account.key)
    client.chat.completions.create(
        model=CHAT_MODEL, messages=messages("[[mock:tokens=900]] spend"), max_tokens=950
    )
    attempts.clear()
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=messages("one more"), max_tokens=100
        )
    assert len(attempts) == 1, f"the SDK retried ({time.monotonic() - started:.1f}s)"
    exc = info.value
    error = assert_error_response(exc.response, 429, "free.tenant-tokens-day-gpt-3.5-turbo")
    assert error["type"] == "insufficient_quota" and exc.type == "insufficient_quota"
    assert exc.response.headers["x-should-retry"] == "false"
    assert exc.response.headers["x-quotagate-quota-reset"] in period_end("day")
    rows = ledger_through(compat_gateway, account.key_id, exc.response.headers["x-request-id"])
    assert [r["http_status"] for r in rows] == [200, 429]


# --- money budgets -----------------------------------------------------------------------


def warning_of(raw: Raw) -> tuple[int, int] | None:
    """(used µ, threshold %) from x-quotagate-quota-warning, or None when absent."""
    header = raw.headers.get("x-quotagate-quota-warning")
    if header is None:
        return None
    found = re.fullmatch(
        r'"pro\.budget-month"; used=(\d+); limit=(\d+); unit=micros; threshold=(\d+)%; '
        r"resets=(\S+)",
        header,
    )
    assert found, header
    assert int(found[2]) == PRO_BUDGET and found[4] in period_end("month")
    return int(found[1]), int(found[3])


def test_budget_remaining_drops_by_each_answers_exact_cost(gateway: Gateway) -> None:
    account = open_account(gateway, "pro")
    client = sdk(gateway, account.key)
    # gpt-3.5-turbo first: an odd prompt + completion count costs a half micro-unit
    # more than a whole number, which the budget must round up.
    answers = [(ask(client, 41, 60), CHAT_MODEL), (ask(client, 41, 60), CHAT_MODEL)]
    usage = answer(answers[0][0]).usage
    assert usage is not None and (usage.prompt_tokens + usage.completion_tokens) % 2 == 1
    with pytest.raises(openai.APIStatusError) as info:
        for _ in range(20):
            answers.append((ask(client, 200, 300, model=GPT4), GPT4))
    costs = [cost(raw, model) for raw, model in answers]
    assert costs[0] == -(-(usage.prompt_tokens * 500_000 + 41 * 1_500_000) // 1_000_000)
    for raw, _ in answers:
        assert raw.headers["x-quotagate-budget-limit"] == money(PRO_BUDGET)
        assert raw.headers["x-quotagate-budget-reset"] in period_end("month")
    # What each response holds back beyond the earlier answers' exact costs is its own
    # reservation: one fixed amount per model, so every answer was settled exactly.
    held = [PRO_BUDGET - budget_left(raw) - sum(costs[:i]) for i, (raw, _) in enumerate(answers)]
    by_model = {model: {h for h, (_, m) in zip(held, answers, strict=True) if m == model}
                for model in (CHAT_MODEL, GPT4)}  # fmt: skip
    assert len(by_model[CHAT_MODEL]) == 1 and len(by_model[GPT4]) == 1, by_model
    assert by_model[GPT4].pop() >= 300 * 60 > costs[-1]  # max_tokens 300 at 60 µ a token

    warned = []
    for raw, _ in answers:
        used = PRO_BUDGET - budget_left(raw)
        expected = 90 if used >= 0.9 * PRO_BUDGET else 80 if used >= 0.8 * PRO_BUDGET else None
        warning = warning_of(raw)
        assert (warning[1] if warning else None) == expected, (used, warning)
        if warning:
            assert warning[0] == used
            warned.append(warning[1])
    assert 80 in warned  # the loop ran past 80% before the budget ran out

    exc = info.value
    error = assert_error_response(exc.response, 402, "pro.budget-month")
    assert error["type"] == "insufficient_quota"
    assert f"limit {money(PRO_BUDGET)} USD, used {money(sum(costs))} USD" in error["message"]
    assert exc.response.headers["x-quotagate-quota-reset"] in period_end("month")
    rows = ledger_through(gateway, account.key_id, exc.response.headers["x-request-id"])
    by_id = {r["request_id"]: r for r in rows}
    for (raw, model), charged in zip(answers, costs, strict=True):
        assert by_id[raw.headers["x-request-id"]]["cost_micros"] == charged
        assert by_id[raw.headers["x-request-id"]]["model"] == model


def test_an_exhausted_budget_falls_back_to_the_cheaper_model(
    gateway: Gateway, mock: MockUpstream
) -> None:
    account = open_account(gateway, "fallback")
    client = sdk(gateway, account.key)
    served: list[Raw] = []
    for _ in range(8):
        served.append(ask(client, 50, 60, model=GPT4))
        forwarded = mock.last_request()["body"]["model"]
        if "x-quotagate-fallback" in served[-1].headers:
            break
        assert forwarded == GPT4 and answer(served[-1]).model == GPT4
    fell_back, on_gpt4 = served[-1], served[:-1]
    assert len(on_gpt4) >= 1, "the first gpt-4 request already fell back"
    assert fell_back.headers["x-quotagate-fallback"] == (
        "gpt-4 -> gpt-3.5-turbo; quota=fallback.budget-month"
    )
    assert forwarded == CHAT_MODEL  # the upstream was asked for the fallback model
    assert answer(fell_back).model == CHAT_MODEL
    # It fell back exactly when a gpt-4 reservation no longer fit the budget.
    gpt4_reserve = SMALL_BUDGET - budget_left(on_gpt4[0])
    spent = sum(cost(raw, GPT4) for raw in on_gpt4)
    assert SMALL_BUDGET - spent < gpt4_reserve <= SMALL_BUDGET - spent + cost(on_gpt4[-1], GPT4)
    # ...and reserved at the fallback's price.
    assert 0 < SMALL_BUDGET - spent - budget_left(fell_back) < gpt4_reserve / 10
    rows = ledger_through(gateway, account.key_id, fell_back.headers["x-request-id"])
    last = next(r for r in rows if r["request_id"] == fell_back.headers["x-request-id"])
    assert (last["model"], last["cost_micros"]) == (CHAT_MODEL, cost(fell_back, CHAT_MODEL))


def test_a_refusal_after_falling_back_does_not_claim_a_fallback(gateway: Gateway) -> None:
    """Once even the fallback model no longer fits, the answer is a 402; it was not
    served by the fallback model, so it must not say it was."""
    account = open_account(gateway, "fallback")
    client = sdk(gateway, account.key)
    served = ask(client, 3000, 3000, model=GPT4)  # 3,000 gpt-4 tokens: over the budget
    assert "x-quotagate-fallback" in served.headers
    with pytest.raises(openai.APIStatusError) as info:
        for _ in range(5):
            ask(client, 3000, 3000, model=GPT4)
    exc = info.value
    assert_error_response(exc.response, 402, "fallback.budget-month")
    assert "x-quotagate-fallback" not in exc.response.headers, exc.response.headers


def test_clamp_lowers_max_tokens_to_what_is_left(gateway: Gateway, mock: MockUpstream) -> None:
    account = open_account(gateway, "clamp")  # 500 tokens a day, clamp, at least 16
    client = sdk(gateway, account.key)
    first = ask(client, 300, 300)
    assert "x-quotagate-clamped" not in first.headers
    assert mock.last_request()["body"]["max_tokens"] == 300
    estimate = 500 - 300 - remaining(first)  # the reservation's prompt part
    prompt = answer(first).usage.prompt_tokens  # type: ignore[union-attr]
    left = 500 - total(first) - estimate  # output tokens the next request may still use
    assert left >= 16
    # Asked for 400: lowered to what is left; the mock answers a little less.
    second = ask(client, left - prompt - 8, 400)
    assert second.headers["x-quotagate-clamped"] == (
        f"max_tokens={left}; quota=clamp.tenant-tokens-day"
    )
    assert mock.last_request()["body"]["max_tokens"] == left
    assert remaining(second) == 0  # the clamped reservation takes exactly what was left
    # Now 8 output tokens would fit, fewer than clamp_min_tokens: refused, not clamped.
    forwarded = mock.requests_seen()
    exc = refused(lambda: ask(client, 8, 400))
    error = assert_error_response(exc.response, 402, "clamp.tenant-tokens-day")
    assert error["type"] == "insufficient_quota"
    assert "x-quotagate-clamped" not in exc.response.headers
    assert mock.requests_seen() == forwarded
    # A request that asks for no more than what is left still passes, unclamped.
    fits = ask(client, 8, 8)
    assert "x-quotagate-clamped" not in fits.headers and remaining(fits) == 0


def test_a_clamp_shares_what_is_left_among_the_n_choices(
    gateway: Gateway, mock: MockUpstream
) -> None:
    """The upstream may write max_tokens for each of n choices: the reservation counts
    them all, and a clamp divides what is left among them, so the answer cannot spend
    past the quota (it used to reserve one choice's worth, not clamp, and spend 4x)."""
    account = open_account(gateway, "clamp")  # 500 tokens a day, clamp, at least 16
    client = sdk(gateway, account.key)
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages("[[mock:tokens=0400]] hi"), max_tokens=400, n=4
    )
    clamped = raw.headers["x-quotagate-clamped"]
    left = int(clamped.removeprefix("max_tokens=").split(";")[0])
    assert mock.last_request()["body"]["max_tokens"] == left and 16 <= left < 125
    assert 0 <= remaining(raw) < 4  # 500 - (estimate + 4 x left): the rounding only
    usage = answer(raw).usage
    assert usage is not None and len(answer(raw).choices) == 4
    # The output reserved is the output written (each choice stopped at the cap).
    assert usage.completion_tokens == 4 * left
    for bad in ({"n": 0}, {"n": 129}, {"max_tokens": 10**19}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=CHAT_MODEL, messages=messages("hi"), **bad)
        assert info.value.param == next(iter(bad))


def test_a_budget_clamp_fits_max_tokens_to_the_money_left(
    gateway: Gateway, mock: MockUpstream
) -> None:
    account = open_account(gateway, "clamp-budget")  # 0.01 USD of gpt-4, clamp
    client = sdk(gateway, account.key)
    inp, out = PRICES[GPT4][0] // 1_000_000, PRICES[GPT4][1] // 1_000_000  # µ per token
    first = ask(client, 100, 120, model=GPT4)
    estimate = (SMALL_BUDGET - budget_left(first) - 120 * out) // inp
    left_money = SMALL_BUDGET - cost(first, GPT4)
    fits = (left_money - estimate * inp) // out  # output tokens the money left pays for
    assert 16 <= fits < 120
    second = ask(client, 100, 120, model=GPT4)
    clamped = f"max_tokens={fits}; quota=clamp-budget.budget-month"
    assert second.headers["x-quotagate-clamped"] == clamped
    assert mock.last_request()["body"]["max_tokens"] == fits
    assert budget_left(second) == left_money - (estimate * inp + fits * out)


def test_a_model_quota_leaves_the_other_models_alone(gateway: Gateway) -> None:
    account = open_account(gateway, "paid")
    client = sdk(gateway, account.key)
    on_gpt4 = ask(client, 400, 420, model=GPT4)
    assert on_gpt4.headers["x-quotagate-quota-limit-tokens"] == str(GPT4_DAILY)  # the tightest
    estimate = GPT4_DAILY - remaining(on_gpt4) - 420
    exc = refused(lambda: ask(client, 10, 100, model=GPT4))
    assert_error_response(exc.response, 402, "paid.tenant-tokens-day-gpt-4")
    # gpt-3.5-turbo is outside the gpt-4 quota: it passes, under the user's monthly one,
    # which counted the gpt-4 answer and not the refused request.
    other = ask(client, 10, 20)
    assert other.headers["x-quotagate-quota-limit-tokens"] == "1000000"
    assert remaining(other) == 1_000_000 - total(on_gpt4) - (estimate + 20)
    assert other.headers["x-ratelimit-limit-tokens"] == "40000"  # the key's TPM still applies
    exc = refused(lambda: ask(client, 10, 100, model=GPT4))
    assert exc.code == "paid.tenant-tokens-day-gpt-4"


def test_a_requests_quota_counts_requests(gateway: Gateway) -> None:
    account = open_account(gateway, "requests")  # 3 requests a day
    client = sdk(gateway, account.key)
    answers = [ask(client, 5, 5) for _ in range(3)]
    assert [a.headers["x-quotagate-quota-remaining-requests"] for a in answers] == ["2", "1", "0"]
    for raw in answers:
        assert raw.headers["x-quotagate-quota-limit-requests"] == "3"
        assert raw.headers["x-quotagate-quota-reset-requests"] in period_end("day")
        assert "x-quotagate-quota-limit-tokens" not in raw.headers
    exc = refused(lambda: ask(client, 5, 5))
    error = assert_error_response(exc.response, 402, "requests.tenant-requests-day")
    assert "limit 3 requests, used 3" in error["message"]


def test_a_failed_upstream_call_is_refunded(gateway: Gateway) -> None:
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    first = ask(client, 30, 100)
    exc = refused(lambda: ask(client, 30, 100, text="[[mock:error=500]]"))
    assert exc.status_code == 502
    probe = ask(client, 30, 100)
    # Only the first answer is charged: the failed call's reservation was given back.
    assert remaining(probe) == remaining(first) - total(first)
    rows = ledger_through(gateway, account.key_id, probe.headers["x-request-id"])
    failed = next(r for r in rows if r["request_id"] == exc.response.headers["x-request-id"])
    assert (failed["status"], failed["http_status"]) == ("error", 502)
    assert failed["prompt_tokens"] + failed["completion_tokens"] == failed["cost_micros"] == 0


def test_a_stream_is_settled_to_its_hidden_usage_chunk(gateway: Gateway) -> None:
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    prompt = messages("[[mock:tokens=0040]] stream")
    probe = ask(client, 40, 100, text="stream")  # the same request, as JSON
    used, reserved = total(probe), FREE_TOKENS - remaining(probe)
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=prompt, max_tokens=100, stream=True
    )
    assert remaining(raw) == FREE_TOKENS - used - reserved
    chunks = list(raw.parse())
    assert chunks and all(chunk.usage is None for chunk in chunks)  # never asked for it
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer(probe).choices[0].message.content
    # The stream was charged its usage (the same as the JSON answer's), not 100 tokens.
    after = ask(client, 40, 100, text="stream")
    assert remaining(after) == FREE_TOKENS - 2 * used - reserved
    # A client that asks for usage gets exactly one usage chunk, with the same numbers.
    asked = list(
        client.chat.completions.create(
            model=CHAT_MODEL, messages=prompt, max_tokens=100, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    usage = [c.usage for c in asked if c.usage is not None]
    assert len(usage) == 1 and usage[0].total_tokens == used
    last = ask(client, 40, 100, text="stream")
    assert remaining(last) == FREE_TOKENS - 4 * used - reserved
    rows = ledger_through(gateway, account.key_id, last.headers["x-request-id"])
    streamed = [r for r in rows if r["stream"]]
    assert len(streamed) == 2
    assert all(r["prompt_tokens"] + r["completion_tokens"] == used for r in streamed)


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
FIELD_OF = [(CHAT_MODEL, "max_tokens"), (REASONING, "max_completion_tokens")]


def caps_sent(mock: MockUpstream) -> dict[str, int | None]:
    body = mock.last_request()["body"]
    return {field: body.get(field) for field in TOKEN_FIELDS}


@pytest.mark.parametrize(("model", "field"), FIELD_OF)
def test_a_request_without_max_tokens_is_capped_at_what_it_reserved(
    gateway: Gateway, mock: MockUpstream, model: str, field: str
) -> None:
    """The reservation counts the plan's default_max_tokens for a request that names no
    cap, and the upstream is told that cap, in the field its model takes: the answer
    cannot cost more than was reserved. (It went upstream uncapped, so an answer of
    3,000 tokens was charged against 64 reserved, and a budget could be overspent.)"""
    account = open_account(gateway, "capless")
    client = sdk(gateway, account.key)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages("[[mock:tokens=3000]] a long answer")
    )
    assert caps_sent(mock) == {
        "max_tokens": None,
        "max_completion_tokens": None,
        field: DEFAULT_CAP,
    }
    completion = answer(raw)
    assert completion.usage is not None and completion.usage.completion_tokens == DEFAULT_CAP
    assert completion.choices[0].finish_reason == "length"
    (row,) = ledger_through(gateway, account.key_id, raw.headers["x-request-id"])
    assert row["completion_tokens"] == DEFAULT_CAP
    assert row["cost_micros"] == cost(raw, model)  # its usage, exactly


@pytest.mark.parametrize(("model", "field"), FIELD_OF)
def test_a_clamp_of_a_request_without_max_tokens_uses_the_models_field(
    gateway: Gateway, mock: MockUpstream, model: str, field: str
) -> None:
    account = open_account(gateway, "capless-clamp")  # 50 tokens a day, clamp, at least 16
    client = sdk(gateway, account.key)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages("[[mock:tokens=3000]] hi")
    )
    clamped = raw.headers["x-quotagate-clamped"]
    left = int(clamped.removeprefix("max_tokens=").split(";")[0])
    assert 16 <= left < 50
    assert caps_sent(mock) == {"max_tokens": None, "max_completion_tokens": None, field: left}
    assert answer(raw).usage.completion_tokens == left  # type: ignore[union-attr]


# --- credits ----------------------------------------------------------------------------


def attempt(client: openai.OpenAI, model: str = CHAT_MODEL) -> Raw | openai.APIStatusError:
    try:
        return ask(client, 1, 8, model=model)
    except openai.APIStatusError as exc:
        return exc


def limit_seen(client: openai.OpenAI) -> str | None:
    outcome = attempt(client)
    return (
        None
        if isinstance(outcome, openai.APIStatusError)
        else outcome.headers.get("x-quotagate-quota-limit-tokens")
    )


def credits_of(gw: Gateway, account: Account) -> list[dict[str, Any]]:
    return list(json.loads(gw.cli("credits", "list", account.name, "--json")))


def test_a_token_topup_reopens_an_exhausted_quota(gateway: Gateway) -> None:
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    ask(client, 900, 950)
    exc = refused(lambda: ask(client, 1, 100))
    assert exc.status_code == 402
    gateway.cli("credits", "add", account.name, "--tokens", "2000", "--kind", "topup")
    passed = poll(lambda: attempt(client), lambda r: not isinstance(r, openai.APIStatusError))
    assert passed.headers["x-quotagate-quota-limit-tokens"] == str(FREE_TOKENS + 2000)
    [credit] = credits_of(gateway, account)
    assert (credit["kind"], credit["resource"], credit["amount"]) == ("topup", "tokens", "2000")
    assert credit["expires_at"] is None


def test_an_override_replaces_the_plan_amount(gateway: Gateway) -> None:
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    gateway.cli("credits", "add", account.name, "--tokens", "300", "--kind", "override")
    assert poll(lambda: limit_seen(client), lambda v: v != str(FREE_TOKENS)) == "300"
    exc = refused(lambda: ask(client, 1, 400))  # fits the plan's 1000, not the override
    assert exc.status_code == 400 and "whole daily tokens quota" in exc.message
    assert "of 300 tokens" in exc.message, exc.message
    ask(client, 200, 200)  # spends about 210 of the 300
    exc = refused(lambda: ask(client, 1, 150))  # fits 300, not what is left of it
    assert exc.status_code == 402 and "limit 300" in exc.message, exc.message
    gateway.cli("credits", "add", account.name, "--tokens", "200", "--kind", "topup")
    assert poll(lambda: limit_seen(client), lambda v: v != "300") == "500"  # override + topup


def test_an_override_to_zero_closes_the_quota(gateway: Gateway) -> None:
    """``credits add --tokens 0 --kind override`` is accepted: the quota becomes 0."""
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    ask(client, 1, 8)  # the key is cached, without credits
    gateway.cli("credits", "add", account.name, "--tokens", "0", "--kind", "override")
    # Polling spends a little of the plan's 1000 each time; the refusal must come from
    # the override (limit 0), not from the polls having spent the 1000.
    exc = poll_until_raises(lambda: ask(client, 1, 8), openai.APIStatusError, CREDIT_DEADLINE)
    assert isinstance(exc, openai.APIStatusError) and exc.status_code == 402
    assert "limit 0 tokens" in exc.message, exc.message


def test_a_burst_credit_counts_until_it_expires(gateway: Gateway) -> None:
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    # Large enough that the polls below cannot spend it before it expires.
    gateway.cli("credits", "add", account.name, "--tokens", "5000", "--kind", "burst",
                "--expires", "4s")  # fmt: skip
    assert poll(lambda: limit_seen(client), lambda v: v != str(FREE_TOKENS)) == "6000"
    [credit] = credits_of(gateway, account)
    assert credit["kind"] == "burst" and credit["expires_at"] is not None
    assert poll(lambda: limit_seen(client), lambda v: v == str(FREE_TOKENS), within=10)


def test_a_burst_credit_that_already_expired_is_refused(gateway: Gateway) -> None:
    """It would never count: refused with its reason, not stored as "added"."""
    account = open_account(gateway, "free")
    client = sdk(gateway, account.key)
    # An hour ago, written in a zone east of UTC (as an operator in Auckland might): a
    # local time 12 hours ahead, which only its offset makes the past.
    expired = (datetime.now(UTC) - timedelta(hours=1)).astimezone(timezone(timedelta(hours=13)))
    with pytest.raises(RuntimeError, match="has already passed"):
        gateway.cli("credits", "add", account.name, "--tokens", "500", "--kind", "burst",
                    "--expires", expired.isoformat(timespec="seconds"))  # fmt: skip
    assert credits_of(gateway, account) == []
    # A valid top-up after it: once the gateway sees the top-up, it counts alone.
    gateway.cli("credits", "add", account.name, "--tokens", "100", "--kind", "topup")
    assert poll(lambda: limit_seen(client), lambda v: v != str(FREE_TOKENS)) == "1100"


def test_a_budget_topup_raises_the_budget(gateway: Gateway) -> None:
    account = open_account(gateway, "pro")
    client = sdk(gateway, account.key)
    gateway.cli("credits", "add", account.name, "--budget", "12.5")

    def budget_limit() -> str:
        return str(ask(client, 1, 8).headers["x-quotagate-budget-limit"])

    assert poll(budget_limit, lambda v: v != money(PRO_BUDGET)) == "12.600000"
    [credit] = credits_of(gateway, account)
    assert (credit["resource"], credit["amount"]) == ("budget", "12.500000")


# --- the tenant's calendar ---------------------------------------------------------------


def test_quotas_reset_at_the_tenants_midnight_and_billing_day(gateway: Gateway) -> None:
    berlin = open_account(gateway, "zoned", "--timezone", "Europe/Berlin", "--billing-day", "15")
    utc = open_account(gateway, "zoned")
    zoned = ask(sdk(gateway, berlin.key), 1, 8)
    plain = ask(sdk(gateway, utc.key), 1, 8)
    assert zoned.headers["x-quotagate-quota-reset-tokens"] in period_end("day", "Europe/Berlin")
    assert zoned.headers["x-quotagate-budget-reset"] in period_end("month", "Europe/Berlin", 15)
    assert plain.headers["x-quotagate-quota-reset-tokens"] in period_end("day")
    assert plain.headers["x-quotagate-budget-reset"] in period_end("month")
    reset = datetime.fromisoformat(zoned.headers["x-quotagate-budget-reset"])
    local = reset.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.day, local.hour, local.minute) == (15, 0, 0)
