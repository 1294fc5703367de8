import json
from decimal import Decimal

import pytest

from usage.money import nanos_to_usd
from usage.pricing import PriceError, Prices, PriceSet, Variant, cost_nanos

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

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


# --- The bill as the provider writes it: cache retentions, tool calls, tiers, variants ----------------------------

# Anthropic's published Claude Sonnet 4.5 prices, per million tokens: $3 input, $0.30 cache read, $3.75 5-minute
# cache write, $6 1-hour cache write, $15 output; web search $10 per 1,000 searches.
SONNET_45 = Prices(input_micros=3_000_000, cached_input_micros=300_000, cache_write_micros=3_750_000,
                   cache_write_extended_micros=6_000_000, output_micros=15_000_000, web_search_micros=10_000_000)


def test_it_prices_5_minute_and_1_hour_writes_and_web_searches_in_one_request():
    cost = cost_nanos(SONNET_45, input_tokens=10_000, cached_input_tokens=4_000, cache_write_tokens=3_000,
                      cache_write_extended_tokens=1_000, output_tokens=500, web_search_calls=2)
    assert cost == (
        9_000_000  # 10,000 - 4,000 cached - 3,000 written = 3,000 uncached x $3/M = $0.009
        + 1_200_000  # 4,000 cached x $0.30/M = $0.0012
        + 7_500_000  # 3,000 - 1,000 = 2,000 5-minute writes x $3.75/M = $0.0075
        + 6_000_000  # 1,000 1-hour writes x $6/M = $0.006
        + 7_500_000  # 500 output x $15/M = $0.0075
        + 20_000_000  # 2 web searches x $10/1,000 = $0.02
    )
    assert cost == 51_200_000


def test_a_tool_call_costs_a_nanodollar_per_micro_usd_per_thousand():
    # $2.50 per 1,000 file searches = 2,500,000 micro-USD per 1,000 = 2,500,000 nanodollars a search.
    prices = Prices(file_search_micros=2_500_000)
    assert cost_nanos(prices, input_tokens=0, cached_input_tokens=0, cache_write_tokens=0, output_tokens=0,
                      file_search_calls=3) == 7_500_000


# OpenAI GPT-5, per million tokens: standard $1.25 in, $0.125 cached, $10 out; flex $0.625, $0.0625, $5;
# priority $2.50, $0.25, $20.
GPT5 = Prices(input_micros=1_250_000, cached_input_micros=125_000, output_micros=10_000_000, variants={
    "flex": Variant(PriceSet(input_micros=625_000, cached_input_micros=62_500, output_micros=5_000_000)),
    "priority": Variant(PriceSet(input_micros=2_500_000, cached_input_micros=250_000, output_micros=20_000_000)),
})


def gpt5_cost(service_tier):
    return cost_nanos(GPT5, input_tokens=1_000, cached_input_tokens=200, cache_write_tokens=0, output_tokens=100,
                      service_tier=service_tier)


@pytest.mark.parametrize("service_tier, expected", [
    # 800 uncached x $1.25/M = $0.001; 200 cached x $0.125/M = $0.000025; 100 out x $10/M = $0.001
    (None, 1_000_000 + 25_000 + 1_000_000),
    ("default", 1_000_000 + 25_000 + 1_000_000),
    # 800 x $0.625/M = $0.0005; 200 x $0.0625/M = $0.0000125; 100 x $5/M = $0.0005
    ("flex", 500_000 + 12_500 + 500_000),
    # 800 x $2.50/M = $0.002; 200 x $0.25/M = $0.00005; 100 x $20/M = $0.002
    ("priority", 2_000_000 + 50_000 + 2_000_000),
    # no variant on these prices: billed at the base
    ("scale", 1_000_000 + 25_000 + 1_000_000),
])
def test_the_answers_service_tier_selects_the_variant(service_tier, expected):
    assert gpt5_cost(service_tier) == expected


def test_it_names_a_reported_tier_or_speed_that_has_no_variant():
    assert GPT5.unpriced(service_tier="scale") == "scale"
    assert GPT5.unpriced(service_tier="flex") is None
    assert GPT5.unpriced(service_tier="default") is None  # OpenAI's name for the base
    assert GPT5.unpriced(service_tier="standard") is None  # Anthropic's
    assert GPT5.unpriced() is None
    assert GPT5.unpriced(service_tier="flex", speed="fast") == "fast"


def test_a_speed_variant_comes_before_the_service_tier_variant():
    prices = Prices(input_micros=5_000_000, variants={
        "fast": Variant(PriceSet(input_micros=30_000_000)),
        "priority": Variant(PriceSet(input_micros=8_000_000)),
    })
    assert prices.select(service_tier="priority", speed="fast").input_micros == 30_000_000
    assert prices.select(service_tier="priority", speed="standard").input_micros == 8_000_000
    assert prices.select(service_tier="priority").input_micros == 8_000_000
    assert prices.unpriced(service_tier="priority", speed="fast") is None
    assert prices.unpriced(service_tier="scale", speed="fast") is None  # the speed variant decides


# OpenAI GPT-5.4, per million tokens: $2.50 in, $0.25 cached, $15 out; above 272K input tokens the whole request
# at $5, $0.50 and $22.50. Priority is flat: $5, $0.50, $30, whatever the size.
GPT54 = Prices(
    input_micros=2_500_000, cached_input_micros=250_000, output_micros=15_000_000,
    tiers=((272_000, PriceSet(input_micros=5_000_000, cached_input_micros=500_000, output_micros=22_500_000)),),
    variants={"priority": Variant(PriceSet(input_micros=5_000_000, cached_input_micros=500_000,
                                           output_micros=30_000_000))},
)


def long_cost(prices, input_tokens, service_tier=None):
    return cost_nanos(prices, input_tokens=input_tokens, cached_input_tokens=100_000, cache_write_tokens=0,
                      output_tokens=1_000, service_tier=service_tier)


def test_a_request_at_the_threshold_is_billed_at_the_base():
    assert long_cost(GPT54, 272_000) == (
        430_000_000  # 172,000 uncached x $2.50/M = $0.43
        + 25_000_000  # 100,000 cached x $0.25/M = $0.025
        + 15_000_000  # 1,000 out x $15/M = $0.015
    )


def test_one_token_over_the_threshold_bills_every_token_at_the_tier():
    assert long_cost(GPT54, 272_001) == (
        860_005_000  # 172,001 uncached x $5/M = $0.860005
        + 50_000_000  # 100,000 cached x $0.50/M = $0.05
        + 22_500_000  # 1,000 out x $22.50/M = $0.0225
    )


def test_a_variant_has_its_own_tiers_or_none():
    assert long_cost(GPT54, 272_001, "priority") == (
        860_005_000  # 172,001 uncached x $5/M
        + 50_000_000  # 100,000 cached x $0.50/M
        + 30_000_000  # 1,000 out x $30/M
    )


def test_the_highest_tier_below_the_input_applies():
    prices = Prices(input_micros=1, tiers=((10, PriceSet(input_micros=2)), (20, PriceSet(input_micros=3))))
    assert [prices.select(input_tokens=n).input_micros for n in (0, 10, 11, 20, 21, 10**9)] == [1, 1, 2, 2, 3, 3]


def test_the_sum_with_extended_writes_is_rounded_once_half_to_even():
    # 1 default write x 250 + 1 extended write x 250 = 500 milli-nanodollars: half of one, to the even 0;
    # one more default write makes 750, which rounds up to 1.
    prices = Prices(cache_write_micros=250, cache_write_extended_micros=250)
    assert cost_nanos(prices, input_tokens=2, cached_input_tokens=0, cache_write_tokens=2,
                      cache_write_extended_tokens=1, output_tokens=0) == 0
    assert cost_nanos(prices, input_tokens=3, cached_input_tokens=0, cache_write_tokens=3,
                      cache_write_extended_tokens=1, output_tokens=0) == 1
    # 1,500 milli-nanodollars -> 2 (the even neighbour), 2,500 -> 2.
    assert cost_nanos(Prices(output_micros=1_500), input_tokens=0, cached_input_tokens=0, cache_write_tokens=0,
                      output_tokens=1) == 2
    assert cost_nanos(Prices(output_micros=2_500), input_tokens=0, cached_input_tokens=0, cache_write_tokens=0,
                      output_tokens=1) == 2


@pytest.mark.parametrize("usage", [
    dict(input_tokens=10, cached_input_tokens=0, cache_write_tokens=2, cache_write_extended_tokens=3, output_tokens=0),
    dict(input_tokens=10, cached_input_tokens=-1, cache_write_tokens=0, output_tokens=0),
    dict(input_tokens=10, cached_input_tokens=0, cache_write_tokens=0, output_tokens=-1),
    dict(input_tokens=10, cached_input_tokens=0, cache_write_tokens=0, output_tokens=0, web_search_calls=-1),
])
def test_it_refuses_impossible_usage(usage):
    with pytest.raises(ValueError, match="impossible usage"):
        cost_nanos(SONNET_45, **usage)


# --- The stored form: seven columns and price_rules ---------------------------------------------------------------

BASE_COLUMNS = dict(input_micros=2_500_000, cached_input_micros=250_000, cache_write_micros=0,
                    cache_write_extended_micros=0, output_micros=15_000_000, web_search_micros=10_000_000,
                    file_search_micros=2_500_000)


def price_fields(input_micros, cached, output):
    return {"input_micros": input_micros, "cached_input_micros": cached, "cache_write_micros": 0,
            "cache_write_extended_micros": 0, "output_micros": output, "web_search_micros": 10_000_000,
            "file_search_micros": 2_500_000}


RULES = {
    "tiers": [{"above": 272_000, **price_fields(5_000_000, 500_000, 22_500_000)}],
    "variants": {
        "flex": {**price_fields(1_250_000, 125_000, 7_500_000),
                 "tiers": [{"above": 272_000, **price_fields(2_500_000, 250_000, 11_250_000)}]},
        "priority": {**price_fields(5_000_000, 500_000, 30_000_000), "tiers": []},
    },
}


def test_the_stored_form_round_trips_through_json():
    prices = Prices.from_columns(**BASE_COLUMNS, rules=RULES)
    assert prices.to_rules() == RULES
    assert json.loads(json.dumps(prices.to_rules())) == RULES
    assert Prices.from_columns(**BASE_COLUMNS, rules=prices.to_rules()) == prices
    assert prices.select("flex", None, 272_001).output_micros == 11_250_000
    assert prices.base == PriceSet(**BASE_COLUMNS)


@pytest.mark.parametrize("rules", [None, {}, {"tiers": [], "variants": {}}])
def test_no_rules_is_flat_prices(rules):
    prices = Prices.from_columns(**BASE_COLUMNS, rules=rules)
    assert prices == Prices(**BASE_COLUMNS)
    assert prices.to_rules() == {"tiers": [], "variants": {}}


def test_a_variant_without_tiers_is_flat():
    rules = {"variants": {"batch": price_fields(1, 2, 3)}}
    prices = Prices.from_columns(**BASE_COLUMNS, rules=rules)
    assert prices.variant("batch") == Variant(PriceSet(**price_fields(1, 2, 3)))


def with_changes(path, value):
    rules = json.loads(json.dumps(RULES))
    *parents, last = path
    target = rules
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return rules


DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    (("tiers", 0, "input_micros"), 2.5e6, r"price_rules\.tiers\[0\]\.input_micros: must be a whole number, not number"),
    (("tiers", 0, "input_micros"), "5", r"price_rules\.tiers\[0\]\.input_micros: must be a whole number, not string"),
    (("tiers", 0, "input_micros"), True, r"price_rules\.tiers\[0\]\.input_micros: must be a whole number, not boolean"),
    (("tiers", 0, "output_micros"), -1, r"price_rules\.tiers\[0\]\.output_micros: must not be negative"),
    (("tiers", 0, "above"), DELETE, r"price_rules\.tiers\[0\]\.above: missing"),
    (("tiers", 0, "above"), 1.0, r"price_rules\.tiers\[0\]\.above: must be a whole number"),
    (("tiers", 0, "file_search_micros"), DELETE, r"price_rules\.tiers\[0\]\.file_search_micros: missing"),
    (("tiers", 0, "input"), 1, r"price_rules\.tiers\[0\]\.input: unknown field"),
    (("variants", "flex", "tiers"), [{"above": 10, **price_fields(1, 1, 1)}, {"above": 10, **price_fields(2, 2, 2)}],
     r"price_rules\.variants\.flex\.tiers\[1\]\.above: 10 must be above the previous tier's 10"),
    (("variants", "flex", "tiers"), {}, r"price_rules\.variants\.flex\.tiers: must be a list"),
    (("variants", "Flex Tier"), price_fields(1, 1, 1), r"price_rules\.variants\.Flex Tier: variant name 'Flex Tier'"),
    (("variants", "default"), price_fields(1, 1, 1), r"price_rules\.variants\.default: 'default' names the base"),
    (("variants", "flex"), [], r"price_rules\.variants\.flex: must be an object"),
    (("variants",), [], r"price_rules\.variants: must be an object"),
    (("discounts",), {}, r"price_rules\.discounts: unknown field"),
])
def test_it_refuses_bad_rules_naming_the_field(path, value, message):
    with pytest.raises(PriceError, match=message):
        Prices.from_columns(**BASE_COLUMNS, rules=with_changes(path, value))


def test_it_refuses_rules_that_are_not_an_object():
    with pytest.raises(PriceError, match="price_rules: must be an object"):
        Prices.from_columns(**BASE_COLUMNS, rules=[])


@pytest.mark.parametrize("column, value", [("input_micros", 1.5), ("output_micros", -1), ("web_search_micros", None)])
def test_it_refuses_bad_base_prices(column, value):
    with pytest.raises(PriceError, match=column):
        Prices.from_columns(**{**BASE_COLUMNS, column: value}, rules={})


def test_tiers_built_in_code_are_checked_too():
    with pytest.raises(PriceError, match="must be above the previous tier's 10"):
        Prices(tiers=((10, PriceSet()), (5, PriceSet())))
    with pytest.raises(PriceError, match="a \\(threshold input tokens, PriceSet\\) pair"):
        Prices(tiers=(10,))
