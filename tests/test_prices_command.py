"""manage.py prices: facades whose prices differ from their catalog model's, --check and --apply."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from gateway.models import ModelFacade

ROOT = Path(__file__).resolve().parent.parent
HAIKU_BATCH = {"input_micros": 500_000, "cached_input_micros": 50_000, "cache_write_micros": 625_000,
               "cache_write_extended_micros": 1_000_000, "output_micros": 2_500_000,
               "web_search_micros": 10_000_000, "file_search_micros": 0, "tiers": []}


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("prices", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def catalog_facade(name, ref, **changes):
    """A facade priced from the catalog (as create_facade --catalog makes it), then `changes`."""
    call_command("create_facade", name, "--provider", "anthropic", "--base-url", "https://api.anthropic.com",
                 "--catalog", ref, stdout=io.StringIO())
    ModelFacade.objects.filter(name=name).update(**changes)
    return ModelFacade.objects.get(name=name)


@pytest.fixture
def facades(db, gpt):
    """haiku: a year-old input price and no batch variant; sonnet: the catalog's prices; gpt-test: no catalog model."""
    catalog_facade("haiku", "anthropic:claude-haiku-4-5", input_price_micros=800_000, catalog_version="genai-prices 0.1.0",
                   price_rules={"tiers": [], "variants": {}})
    catalog_facade("sonnet", "anthropic:claude-sonnet-4-5")


def test_it_lists_the_differences_field_by_field_and_skips_facades_without_a_catalog_model(facades):
    out, err = run()
    assert out.splitlines() == [
        "haiku (anthropic:claude-haiku-4-5, prices from genai-prices 0.1.0):",
        "  input_price_micros: 800,000 → 1,000,000",
        "  price_rules.variants.batch.cache_write_extended_micros: absent → 1,000,000",
        "  price_rules.variants.batch.cache_write_micros: absent → 625,000",
        "  price_rules.variants.batch.cached_input_micros: absent → 50,000",
        "  price_rules.variants.batch.file_search_micros: absent → 0",
        "  price_rules.variants.batch.input_micros: absent → 500,000",
        "  price_rules.variants.batch.output_micros: absent → 2,500,000",
        "  price_rules.variants.batch.web_search_micros: absent → 10,000,000",
        "Skipped 1 facade(s) without a catalog model: gpt-test",
        "1 of 2 facade(s) differ from the catalog (genai-prices 0.2.5): run `manage.py prices --apply` to update them.",
    ]
    assert err == ""
    assert ModelFacade.objects.get(name="haiku").input_price_micros == 800_000  # listing changes nothing


def test_check_fails_while_a_facade_differs_and_apply_updates_it_for_later_requests(facades):
    with pytest.raises(CommandError, match=r"1 facade\(s\) differ from the catalog, 0 cannot be checked") as failure:
        run("--check")
    assert failure.value.returncode == 1

    out, _ = run("--apply")
    assert "Updated 1 of 2 facade(s) to the catalog's prices (genai-prices 0.2.5)" in out
    haiku = ModelFacade.objects.get(name="haiku")
    assert (haiku.input_price_micros, haiku.cached_input_price_micros, haiku.cache_write_price_micros,
            haiku.cache_write_extended_price_micros, haiku.output_price_micros, haiku.web_search_price_micros,
            haiku.file_search_price_micros) == (1_000_000, 100_000, 1_250_000, 2_000_000, 5_000_000, 10_000_000, 0)
    assert haiku.price_rules == {"tiers": [], "variants": {"batch": HAIKU_BATCH}}
    assert haiku.catalog_version == "genai-prices 0.2.5"

    out, _ = run("--check")  # no CommandError: exit 0
    assert "0 of 2 facade(s) differ from the catalog (genai-prices 0.2.5)." in out


def test_apply_leaves_the_other_fields_and_the_facades_without_a_catalog_model(facades, gpt):
    ModelFacade.objects.filter(name="haiku").update(upstream_model="claude-haiku-4-5-20251001", is_active=False)
    run("--apply")
    haiku = ModelFacade.objects.get(name="haiku")
    assert (haiku.upstream_model, haiku.is_active, haiku.base_url) == (
        "claude-haiku-4-5-20251001", False, "https://api.anthropic.com")
    gpt_after = ModelFacade.objects.get(pk=gpt.pk)
    assert (gpt_after.input_price_micros, gpt_after.output_price_micros, gpt_after.catalog_ref) == (150_000, 600_000, "")


def test_apply_records_the_catalog_version_of_prices_that_already_match(facades):
    ModelFacade.objects.filter(name="sonnet").update(catalog_version="genai-prices 0.1.0")
    run("--apply")
    assert ModelFacade.objects.get(name="sonnet").catalog_version == "genai-prices 0.2.5"


def test_a_catalog_model_the_catalog_no_longer_knows_is_reported_and_fails_the_check(facades):
    ModelFacade.objects.filter(name="sonnet").update(catalog_ref="anthropic:claude-retired")
    with pytest.raises(CommandError, match=r"1 facade\(s\) differ from the catalog, 1 cannot be checked"):
        run("--check")
    out, err = io.StringIO(), io.StringIO()
    call_command("prices", stdout=out, stderr=err)
    assert "sonnet (anthropic:claude-retired) cannot be checked: 'anthropic:claude-retired': no model" in err.getvalue()
    assert "1 of 1 facade(s) differ" in out.getvalue()


def test_without_facades_to_check_it_says_so(gpt):
    out, _ = run("--check")
    assert out.splitlines() == ["Skipped 1 facade(s) without a catalog model: gpt-test",
                                "0 of 0 facade(s) differ from the catalog (genai-prices 0.2.5)."]


def test_check_and_apply_exclude_each_other(db):
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("--check", "--apply")


def test_manage_py_prices_check_exits_1_then_0_after_apply(test_database_url):
    catalog_facade("haiku", "anthropic:claude-haiku-4-5", output_price_micros=4_000_000)
    env = {**os.environ, "DATABASE_URL": test_database_url}

    def manage(*args):
        return subprocess.run([sys.executable, "manage.py", "prices", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    check = manage("--check")
    assert check.returncode == 1, check.stderr
    assert "  output_price_micros: 4,000,000 → 5,000,000" in check.stdout
    assert manage("--apply").returncode == 0
    assert manage("--check").returncode == 0
