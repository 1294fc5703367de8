"""manage.py create_api_key and create_facade."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from gateway.models import KEY_PREFIX, ApiKey, ModelFacade, hash_key


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_api_key_prints_the_key_alone_on_the_last_line_and_stores_only_its_digest(alice):
    out, err = run("create_api_key", "alice", "--name", "laptop", "--expires", "30")
    raw = out.strip().splitlines()[-1]
    assert raw.startswith(KEY_PREFIX) and len(raw) >= len(KEY_PREFIX) + 43
    key = ApiKey.objects.get()
    assert key.digest == hash_key(raw) and key.prefix == raw[:12] and key.name == "laptop"
    assert raw not in err and key.prefix in err
    assert timedelta(days=29, hours=23) < key.expires_at - timezone.now() <= timedelta(days=30)
    assert key.is_usable()


def test_create_api_key_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        run("create_api_key", "ghost")


def test_create_api_key_refuses_zero_days(alice):
    with pytest.raises(CommandError, match="at least 1"):
        run("create_api_key", "alice", "--expires", "0")


def test_keys_of_an_inactive_user_revoked_or_expired_are_not_usable(alice):
    key, _ = ApiKey.objects.create_key(alice)
    assert ApiKey.objects.usable().count() == 1
    alice.is_active = False
    alice.save()
    key.refresh_from_db()
    assert not key.is_usable() and ApiKey.objects.usable().count() == 0
    alice.is_active = True
    alice.save()
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ApiKey.objects.usable().count() == 0
    ApiKey.objects.filter(pk=key.pk).update(expires_at=None, revoked_at=timezone.now())
    assert ApiKey.objects.usable().count() == 0


def test_create_facade_creates_then_updates_keeping_left_out_options(db):
    run("create_facade", "gpt-x", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--input-price", "0.15", "--cached-input-price", "0.075", "--output-price", "0.6", "--api-key-env", "OPENAI_API_KEY")
    facade = ModelFacade.objects.get(name="gpt-x")
    assert (facade.input_price_micros, facade.cached_input_price_micros, facade.output_price_micros) == (150000, 75000, 600000)
    assert facade.upstream_model == "gpt-x" and facade.api_key_env == "OPENAI_API_KEY"
    out, _ = run("create_facade", "gpt-x", "--output-price", "0.000001", "--upstream-model", "gpt-4o-mini")
    facade.refresh_from_db()
    assert "Updated" in out
    assert (facade.input_price_micros, facade.output_price_micros, facade.upstream_model) == (150000, 1, "gpt-4o-mini")
    assert facade.base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--provider", "openai", "--base-url", "not a url"], "base_url"),
        (["--provider", "openai", "--base-url", "https://x.test", "--input-price", "-1"], "negative"),
        (["--provider", "openai", "--base-url", "https://x.test", "--output-price", "abc"], "not a number"),
        (["--provider", "openai", "--base-url", "https://x.test", "--output-price", "0.0000001"], "6 digits"),
        (["--provider", "openai", "--base-url", "https://x.test", "--output-price", "NaN"], "not a price"),
        (["--base-url", "https://x.test"], "--provider"),
        (["--provider", "openai", "--base-url", "https://x.test", "--api-key-env", "SECRET_KEY"],
         "SECRET_KEY is not an upstream credential variable"),
        (["--provider", "anthropic", "--base-url", "https://x.test", "--kind", "embeddings"],
         "Anthropic has no embeddings endpoint"),
        (["--provider", "anthropic", "--base-url", "https://x.test", "--openai-organization", "org-1"],
         "OpenAI-compatible facades only"),
    ],
)
def test_create_facade_refuses_bad_input_with_a_clear_error(db, args, message):
    with pytest.raises(CommandError, match=message):
        run("create_facade", "bad", *args)
    assert not ModelFacade.objects.exists()


def test_create_facade_sets_the_organization_and_project_that_pay(db):
    run("create_facade", "gpt-org", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--api-key-env", "CODEVECTOR_UPSTREAM_OPENAI", "--openai-organization", "org-abc", "--openai-project", "proj_1")
    facade = ModelFacade.objects.get(name="gpt-org")
    assert (facade.openai_organization, facade.openai_project) == ("org-abc", "proj_1")


def test_create_facade_refuses_an_unknown_provider(db):
    with pytest.raises(CommandError, match="invalid choice"):
        run("create_facade", "bad", "--provider", "mistral", "--base-url", "https://x.test")


# --- prices from the price catalog, the new billed quantities (issue #28) -------------------------

SONNET_TIER = {"above": 200_000, "input_micros": 6_000_000, "cached_input_micros": 600_000,
               "cache_write_micros": 7_500_000, "cache_write_extended_micros": 12_000_000,
               "output_micros": 22_500_000, "web_search_micros": 10_000_000, "file_search_micros": 0}
SONNET_BATCH = {"input_micros": 1_500_000, "cached_input_micros": 150_000, "cache_write_micros": 1_875_000,
                "cache_write_extended_micros": 3_000_000, "output_micros": 7_500_000,
                "web_search_micros": 10_000_000, "file_search_micros": 0,
                "tiers": [{"above": 200_000, "input_micros": 3_000_000, "cached_input_micros": 300_000,
                           "cache_write_micros": 3_750_000, "cache_write_extended_micros": 6_000_000,
                           "output_micros": 11_250_000, "web_search_micros": 10_000_000, "file_search_micros": 0}]}


def prices_of(facade):
    return (facade.input_price_micros, facade.cached_input_price_micros, facade.cache_write_price_micros,
            facade.cache_write_extended_price_micros, facade.output_price_micros, facade.web_search_price_micros,
            facade.file_search_price_micros)


def test_create_facade_takes_every_price_from_the_catalog(db):
    out, _ = run("create_facade", "sonnet", "--provider", "anthropic", "--base-url", "https://api.anthropic.com",
                 "--catalog", "anthropic:claude-sonnet-4-5")
    facade = ModelFacade.objects.get(name="sonnet")
    assert prices_of(facade) == (3_000_000, 300_000, 3_750_000, 6_000_000, 15_000_000, 10_000_000, 0)
    assert facade.price_rules == {"tiers": [SONNET_TIER], "variants": {"batch": SONNET_BATCH}}
    assert facade.catalog_ref == "anthropic:claude-sonnet-4-5"
    assert facade.catalog_version == "genai-prices 0.2.5"
    assert "prices from anthropic:claude-sonnet-4-5 (genai-prices 0.2.5)" in out


def test_price_options_beside_the_catalog_override_its_prices(db):
    run("create_facade", "sonnet", "--provider", "anthropic", "--base-url", "https://api.anthropic.com",
        "--catalog", "anthropic:claude-sonnet-4-5", "--input-price", "2.7", "--web-search-price", "9",
        "--price-rules", '{"tiers": [], "variants": {}}')
    facade = ModelFacade.objects.get(name="sonnet")
    assert prices_of(facade) == (2_700_000, 300_000, 3_750_000, 6_000_000, 15_000_000, 9_000_000, 0)
    assert facade.price_rules == {"tiers": [], "variants": {}}
    assert facade.catalog_ref == "anthropic:claude-sonnet-4-5"  # kept: `manage.py prices` shows the discount


def test_create_facade_sets_the_new_prices_and_price_rules_by_hand(db):
    tier = {**SONNET_TIER, "above": 1000}
    run("create_facade", "gpt-x", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--cache-write-extended-price", "0.5", "--web-search-price", "25", "--file-search-price", "2.5",
        "--price-rules", json.dumps({"tiers": [tier]}))
    facade = ModelFacade.objects.get(name="gpt-x")
    assert prices_of(facade) == (0, 0, 0, 500_000, 0, 25_000_000, 2_500_000)
    assert facade.price_rules == {"tiers": [tier]}
    assert (facade.catalog_ref, facade.catalog_version) == ("", "")
    run("create_facade", "gpt-x", "--output-price", "1")
    facade.refresh_from_db()
    assert facade.price_rules == {"tiers": [tier]} and facade.web_search_price_micros == 25_000_000


NEW = ["--provider", "openai", "--base-url", "https://x.test"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--price-rules", "{tiers"], "--price-rules is not JSON"),
        (["--price-rules", "[]"], "--price-rules: price_rules: must be an object"),
        (["--price-rules", '{"tiers": [{"above": 1}]}'], r"--price-rules: price_rules\.tiers\[0\]\.input_micros: missing"),
        (["--price-rules", '{"variants": {"standard": {}}}'], r"price_rules\.variants\.standard: 'standard' names the base"),
        (["--price-rules", '{"speed": {}}'], r"price_rules\.speed: unknown field"),
        (["--web-search-price", "-10"], "--web-search-price '-10': a price cannot be negative"),
        (["--file-search-price", "ten"], r"--file-search-price 'ten' is not a number \(USD per 1,000 calls"),
        (["--catalog", "anthropic:claude-nonesuch"], "--catalog 'anthropic:claude-nonesuch': no model"),
        (["--catalog", "claude-sonnet-4-5"], "a catalog reference is provider:model"),
        (["--catalog", "openrouter:google/gemini-2.5-flash"],
         r"cache_write_micros \(cache_write_mtok\) is \$0\.08333\d+, not a whole number of micro-USD"),
    ],
)
def test_create_facade_refuses_bad_prices_rules_and_catalog_models_naming_them(db, args, message):
    with pytest.raises(CommandError, match=message):
        run("create_facade", "bad", *NEW, *args)
    assert not ModelFacade.objects.exists()


def test_a_float_price_in_price_rules_is_refused_naming_the_field(db):
    prices = dict.fromkeys(["input_micros", "cached_input_micros", "cache_write_micros",
                            "cache_write_extended_micros", "output_micros", "web_search_micros",
                            "file_search_micros"], 0)
    rules = {"variants": {"flex": {**prices, "output_micros": 2.5e6}}}
    with pytest.raises(CommandError, match=r"price_rules\.variants\.flex\.output_micros: must be a whole number"):
        run("create_facade", "bad", *NEW, "--price-rules", json.dumps(rules))
