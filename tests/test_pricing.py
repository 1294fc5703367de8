from decimal import Decimal

import pytest

from usage.money import nanos_to_usd
from usage.pricing import Prices, cost_nanos

SONNET = Prices(input_micros=3_000_000, cached_input_micros=300_000, cache_write_micros=3_750_000,
                output_micros=15_000_000)


def cost(prices, inp=0, cached=0, write=0, out=0):
    return cost_nanos(prices, input_tokens=inp, cached_input_tokens=cached, cache_write_tokens=write, output_tokens=out)


def test_it_prices_the_anthropic_fixture_exactly():
    # 21 uncached x $3 + 1800 cached x $0.30 + 200 writes x $3.75 + 57 out x $15, per million tokens.
    assert cost(SONNET, inp=2021, cached=1800, write=200, out=57) == 63_000 + 540_000 + 750_000 + 855_000


@pytest.mark.parametrize(
    "micros, tokens, expected",
    [
        (500, 1, 0),  # exactly half a nanodollar rounds to the even 0
        (1500, 1, 2),  # 1.5 -> 2
        (2500, 1, 2),  # 2.5 -> 2
        (3500, 1, 4),  # 3.5 -> 4
        (501, 1, 1),  # just over half rounds up
        (499, 1, 0),
        (150_000, 1, 150),
        (1, 10**9, 10**6),
    ],
)
def test_it_rounds_once_half_to_even(micros, tokens, expected):
    assert cost(Prices(input_micros=micros), inp=tokens) == expected


def test_it_rounds_the_sum_once_not_each_part():
    # 0.5 + 0.5 nanodollars: rounding each part to even would give 0, the sum is exactly 1.
    prices = Prices(input_micros=500, output_micros=500)
    assert cost(prices, inp=1, out=1) == 1


def test_it_refuses_more_cached_tokens_than_input():
    with pytest.raises(ValueError):
        cost(SONNET, inp=10, cached=8, write=3)


def test_nanos_show_as_usd_with_nine_places():
    assert nanos_to_usd(2_208_000) == Decimal("0.002208000")
    assert format(nanos_to_usd(1), "f") == "0.000000001"
