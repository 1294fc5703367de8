"""Cost of a request: tokens x prices, in exact integer arithmetic, rounded once (half to even) to nanodollars."""

from dataclasses import dataclass


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
    # Half to even, in integers (on the hot path; the same result as Decimal's ROUND_HALF_EVEN).
    nanos, rest = divmod(milli_nanos, 1000)
    if rest > 500 or (rest == 500 and nanos % 2):
        nanos += 1
    return nanos
