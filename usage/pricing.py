"""Cost of a request: tokens x prices, in Decimal, rounded once to integer nanodollars."""

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal


@dataclass(frozen=True, slots=True)
class Prices:
    """Integer micro-USD per million tokens."""

    input_micros: int = 0
    cached_input_micros: int = 0
    cache_write_micros: int = 0
    output_micros: int = 0


def cost_nanos(prices: Prices, *, input_tokens: int, cached_input_tokens: int, cache_write_tokens: int,
               output_tokens: int) -> int:
    """`input_tokens` counts every prompt token; cached reads and cache writes are priced apart.

    micro-USD per million tokens = 1e-12 USD per token = 1e-3 nanodollars per token, so the exact
    cost in nanodollars is the integer sum below divided by 1000, rounded half to even, once.
    """
    uncached = input_tokens - cached_input_tokens - cache_write_tokens
    if uncached < 0:
        raise ValueError("cached and cache-write tokens exceed the input tokens")
    milli_nanos = (
        uncached * prices.input_micros
        + cached_input_tokens * prices.cached_input_micros
        + cache_write_tokens * prices.cache_write_micros
        + output_tokens * prices.output_micros
    )
    return int((Decimal(milli_nanos) / 1000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
