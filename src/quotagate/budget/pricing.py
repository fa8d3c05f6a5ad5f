"""Money from token counts: integer micro-units, never floats (1 USD = 1,000,000)."""

from __future__ import annotations

from quotagate.config.schema import Price

Prices = tuple[int, int]  # micro-units per 1M input tokens, per 1M output tokens


def micros_per_1m(price: Price) -> Prices:
    return round(price.input_per_1m * 1_000_000), round(price.output_per_1m * 1_000_000)


def cost_micros(prompt: int, completion: int, prices: Prices) -> int:
    """The cost of a call, rounded up to the next micro-unit."""
    return -(-(prompt * prices[0] + completion * prices[1]) // 1_000_000)


def output_tokens_for(micros: int, prompt: int, prices: Prices) -> int:
    """How many output tokens ``micros`` pays for after the prompt (≥ 0)."""
    left = micros * 1_000_000 - prompt * prices[0]
    if prices[1] == 0:
        return 1 << 30 if left >= 0 else 0
    return max(0, left // prices[1])


def format_money(micros: int) -> str:
    """``12000345`` → ``12.000345``: exact, from the integer (per response: kept to
    one division and one format)."""
    if micros < 0:
        return "-" + format_money(-micros)
    whole, frac = divmod(micros, 1_000_000)
    return f"{whole}.{frac:06d}"
