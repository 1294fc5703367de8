"""gateway.price_catalog: facades' prices from genai-prices, and cost_nanos agreeing with genai_prices.calc_price."""

import subprocess
import sys
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from types import SimpleNamespace

import genai_prices
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.price_catalog import (
    CatalogError, Difference, apply_catalog, catalog_prices, catalog_version, differences, facade_price_fields,
    list_catalog_models, stored_prices,
)
from usage.pricing import PRICE_FIELDS, Prices, PriceSet, Variant, cost_nanos

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)  # a fixed "now": the catalog's prices change with time

# Every model codevector/demo.py creates a facade for, and the current ones it will move to.
DEMO_REFS = [
    "openai:gpt-4o-mini", "openai:gpt-4o", "openai:text-embedding-3-small", "anthropic:claude-sonnet-4-5",
    "anthropic:claude-haiku-4-5", "openai:gpt-5", "openai:gpt-5-mini",
]
# Beyond the demo: a 272K tier with a flat priority variant, a dated price change, a speed variant.
MORE_REFS = ["openai:gpt-5.4", "anthropic:claude-opus-4-6", "anthropic:claude-opus-5"]


def openai_set(inp, cached, out, web=10_000_000, files=2_500_000):
    # OpenAI bills no cache writes: the catalog prices none, so writes take the input price (calc_price's rule).
    return PriceSet(input_micros=inp, cached_input_micros=cached, cache_write_micros=inp,
                    cache_write_extended_micros=inp, output_micros=out, web_search_micros=web,
                    file_search_micros=files)


def anthropic_set(inp, cached, write, write_1h, out):
    return PriceSet(input_micros=inp, cached_input_micros=cached, cache_write_micros=write,
                    cache_write_extended_micros=write_1h, output_micros=out, web_search_micros=10_000_000)


def test_sonnet_4_5_has_anthropics_published_prices():
    entry = catalog_prices("anthropic:claude-sonnet-4-5", AT)
    # $3 in, $0.30 read, $3.75 5-minute write, $6 1-hour write, $15 out, $10 per 1,000 web searches;
    # above 200K input tokens: $6, $0.60, $7.50, $12, $22.50. Batch: half of each.
    assert entry.prices == Prices(
        *astuple(anthropic_set(3_000_000, 300_000, 3_750_000, 6_000_000, 15_000_000)),
        tiers=((200_000, anthropic_set(6_000_000, 600_000, 7_500_000, 12_000_000, 22_500_000)),),
        variants={"batch": Variant(anthropic_set(1_500_000, 150_000, 1_875_000, 3_000_000, 7_500_000),
                                   ((200_000, anthropic_set(3_000_000, 300_000, 3_750_000, 6_000_000, 11_250_000)),))},
    )
    assert entry.ref == "anthropic:claude-sonnet-4-5"
    assert entry.version == f"genai-prices {genai_prices.__version__}"
    assert entry.ignored == ()


def test_haiku_4_5_has_anthropics_published_prices():
    prices = catalog_prices("anthropic:claude-haiku-4-5", AT).prices
    # $1 in, $0.10 read, $1.25 5-minute write, $2 1-hour write, $5 out.
    assert prices.base == anthropic_set(1_000_000, 100_000, 1_250_000, 2_000_000, 5_000_000)
    assert prices.tiers == ()
    assert [name for name, _ in prices.variants] == ["batch"]


def test_gpt_5_has_openais_published_prices_and_service_tiers():
    prices = catalog_prices("openai:gpt-5", AT).prices
    # $1.25 in, $0.125 cached, $10 out; $10 per 1,000 web searches, $2.50 per 1,000 file searches.
    assert prices.base == openai_set(1_250_000, 125_000, 10_000_000)
    assert dict(prices.variants) == {
        "batch": Variant(openai_set(625_000, 62_500, 5_000_000)),
        "flex": Variant(openai_set(625_000, 62_500, 5_000_000)),
        "priority": Variant(openai_set(2_500_000, 250_000, 20_000_000)),
        "fast": Variant(openai_set(2_500_000, 250_000, 20_000_000)),
    }


def test_gpt_5_mini_has_openais_published_prices():
    prices = catalog_prices("openai:gpt-5-mini", AT).prices
    # $0.25 in, $0.025 cached, $2 out; flex half; priority $0.45, $0.045, $3.60.
    assert prices.base == openai_set(250_000, 25_000, 2_000_000)
    assert prices.variant("flex") == Variant(openai_set(125_000, 12_500, 1_000_000))
    assert prices.variant("priority") == Variant(openai_set(450_000, 45_000, 3_600_000))


@pytest.mark.parametrize("ref, base", [
    ("openai:gpt-4o", openai_set(2_500_000, 1_250_000, 10_000_000)),  # $2.50, $1.25, $10
    ("openai:gpt-4o-mini", openai_set(150_000, 75_000, 600_000)),  # $0.15, $0.075, $0.60
    ("openai:text-embedding-3-small", openai_set(20_000, 20_000, 0, web=0, files=0)),  # $0.02 per million
])
def test_the_other_demo_models_have_their_published_base_prices(ref, base):
    assert catalog_prices(ref, AT).prices.base == base


def test_the_272k_tier_and_a_flat_priority_variant():
    prices = catalog_prices("openai:gpt-5.4", AT).prices
    # $2.50 in, $0.25 cached, $15 out; above 272K: $5, $0.50, $22.50. Priority: $5, $0.50, $30 flat.
    assert prices.base == openai_set(2_500_000, 250_000, 15_000_000)
    assert prices.tiers == ((272_000, openai_set(5_000_000, 500_000, 22_500_000)),)
    assert prices.variant("priority") == Variant(openai_set(5_000_000, 500_000, 30_000_000))


def test_the_price_active_at_the_time_is_chosen_and_dated():
    now = catalog_prices("anthropic:claude-opus-4-6", AT)
    before = catalog_prices("anthropic:claude-opus-4-6", datetime(2026, 3, 1, tzinfo=UTC))
    assert now.prices.tiers == () and now.version.endswith(", prices from 2026-03-13")
    assert before.prices.tiers[0][0] == 200_000 and before.version == catalog_version()


def test_a_variant_not_yet_started_is_not_offered():
    assert catalog_prices("openai:gpt-5", datetime(2026, 10, 1, tzinfo=UTC)).prices.variants == ()


def test_a_speed_variant_is_named_by_the_speed():
    prices = catalog_prices("anthropic:claude-opus-5", AT).prices
    # Fast mode: $10 in, $1 read, $12.50 write, $20 1-hour write, $50 out.
    assert prices.variant("fast") == Variant(anthropic_set(10_000_000, 1_000_000, 12_500_000, 20_000_000, 50_000_000))


def test_it_refuses_a_price_that_is_not_whole_micro_usd_naming_model_field_and_value():
    with pytest.raises(CatalogError, match=r"openrouter:google/gemini-2\.5-flash: cache_write_micros "
                                           r"\(cache_write_mtok\) is \$0\.08333\d*, not a whole number of micro-USD"):
        catalog_prices("openrouter:google/gemini-2.5-flash", AT)


@pytest.mark.parametrize("ref, message", [
    ("gpt-5", "a catalog reference is provider:model"),
    ("nobody:gpt-5", "no provider 'nobody'"),
    ("openai:gpt-0", "no model 'gpt-0' of openai"),
    ("deepseek:deepseek-chat", "prices by time of day cannot be stored"),
])
def test_it_refuses_what_it_cannot_price(ref, message):
    with pytest.raises(CatalogError, match=message):
        catalog_prices(ref, AT)


def test_it_lists_catalog_models_for_the_picker():
    anthropic = list_catalog_models("anthropic")
    assert ("anthropic:claude-sonnet-4-5", "Claude Sonnet 4.5") in anthropic
    assert all(ref.startswith("anthropic:") for ref, _ in anthropic)
    assert anthropic == sorted(anthropic)
    assert len(list_catalog_models()) > len(anthropic)


def test_facade_fields_store_and_read_back_the_catalog_prices():
    fields = facade_price_fields("openai:gpt-5.4", AT)
    assert fields["input_price_micros"] == 2_500_000
    assert fields["file_search_price_micros"] == 2_500_000
    assert fields["price_rules"]["tiers"][0]["above"] == 272_000
    assert fields["catalog_ref"] == "openai:gpt-5.4"
    assert fields["catalog_version"] == catalog_version()
    assert stored_prices(SimpleNamespace(**fields)) == catalog_prices("openai:gpt-5.4", AT).prices


def test_differences_name_each_changed_price_and_apply_fixes_them():
    facade = SimpleNamespace(**facade_price_fields("openai:gpt-5", AT))
    assert differences(facade, AT) == []
    facade.output_price_micros = 9_000_000
    facade.price_rules["variants"]["flex"]["input_micros"] = 1
    del facade.price_rules["variants"]["batch"]
    found = differences(facade, AT)
    assert Difference("output_price_micros", 9_000_000, 10_000_000) in found
    assert Difference("price_rules.variants.flex.input_micros", 1, 625_000) in found
    assert Difference("price_rules.variants.batch.output_micros", None, 5_000_000) in found
    assert str(Difference("output_price_micros", 9_000_000, 10_000_000)) == \
        "output_price_micros: 9,000,000 stored, 10,000,000 in the catalog"
    assert apply_catalog(facade, AT) == found
    assert differences(facade, AT) == []


def test_a_facade_without_a_catalog_ref_has_no_differences():
    assert differences(SimpleNamespace(catalog_ref=""), AT) == []


def test_importing_the_module_does_not_load_the_catalog():
    code = "import sys, gateway.price_catalog; print('genai_prices' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- cost_nanos against genai_prices.calc_price ------------------------------------------------------------------

def contexts(ref):
    """(service_tier, speed, calc_price's price_context) for the base and every variant the model has."""
    model = genai_prices.data_snapshot.get_snapshot().find_provider_model(ref.split(":")[1], None,
                                                                          ref.split(":")[0], None)[1]
    found = [(None, None, None), ("default", None, {"service_tier": "default"})]
    for variant in model.price_variants or ():
        (key, value), = variant.when.items()
        found.append((None, value, variant.when) if key == "speed" else (value, None, variant.when))
    return found


usages = st.fixed_dictionaries({
    "uncached": st.integers(0, 400_000),
    "cached": st.integers(0, 200_000),
    "writes": st.integers(0, 100_000),
    "extended": st.integers(0, 100_000),
    "output": st.integers(0, 200_000),
    "web": st.integers(0, 50),
    "files": st.integers(0, 50),
    # Now and then the total input lands on a tier's threshold or one token past it.
    "total": st.sampled_from([None, None, None, 200_000, 200_001, 272_000, 272_001]),
})


@pytest.mark.parametrize("ref", DEMO_REFS + MORE_REFS)
def test_cost_nanos_agrees_with_calc_price(ref):
    prices = catalog_prices(ref, AT).prices
    provider_id, model_ref = ref.split(":")

    @settings(deadline=None, max_examples=150, derandomize=True)
    @given(usage=usages, context=st.sampled_from(contexts(ref)))
    def agrees(usage, context):
        service_tier, speed, price_context = context
        writes = usage["writes"] + usage["extended"]
        total = usage["uncached"] + usage["cached"] + writes
        if usage["total"] is not None and usage["total"] >= usage["cached"] + writes:
            total = usage["total"]
        ours = cost_nanos(prices, input_tokens=total, cached_input_tokens=usage["cached"], cache_write_tokens=writes,
                          cache_write_extended_tokens=usage["extended"], output_tokens=usage["output"],
                          web_search_calls=usage["web"], file_search_calls=usage["files"],
                          service_tier=service_tier, speed=speed)
        theirs = genai_prices.Usage(input_tokens=total, cache_read_tokens=usage["cached"], cache_write_tokens=writes,
                                    cache_write_1h_tokens=usage["extended"], output_tokens=usage["output"],
                                    web_searches=usage["web"], storage_searches=usage["files"])
        with localcontext() as exact:
            exact.prec = 60  # the default 28 digits are plenty, but the comparison must not depend on it
            total_usd = genai_prices.calc_price(theirs, model_ref, provider_id=provider_id,
                                                genai_request_timestamp=AT, price_context=price_context).total_price
            expected = int((total_usd * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        assert ours == expected

    agrees()


def astuple(price_set: PriceSet) -> tuple:
    return tuple(getattr(price_set, name) for name in PRICE_FIELDS)
