"""The facade admin in headless Chromium: the list fits a 1400-pixel screen with its prices in view,
and picking a catalog model fills the price inputs, which stay editable. Screenshots in var/."""

import json

import pytest
from django.contrib.auth.models import User

from codevector.demo import ensure_demo_facades
from gateway.models import ModelFacade
from tests.test_docs_browser import ARGS, CHROMIUM, SCREENSHOTS


@pytest.fixture
def admin_page(monkeypatch, live_server):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM reads are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    User.objects.create_superuser("root", "root@example.com", "root-password")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "root-password")
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        yield page
        browser.close()


@pytest.mark.postgres_only
def test_the_facade_list_fits_1400_pixels_with_catalog_models_and_prices_in_view(live_server, admin_page):
    ensure_demo_facades("http://127.0.0.1:8001")
    ModelFacade.objects.create(name="claude-sonnet-4-5-eu-long-context", provider="anthropic",
                               base_url="https://bedrock-runtime.eu-central-1.amazonaws.com",
                               upstream_model="eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
                               catalog_ref="anthropic:claude-sonnet-4-5", input_price_micros=3_300_000,
                               output_price_micros=16_500_000)
    page = admin_page
    page.goto(f"{live_server.url}/admin/gateway/modelfacade/")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "facade-list-1400.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    # The admin wraps the table in a box that scrolls on its own: nothing may hide in it either.
    assert page.evaluate("(() => { const box = document.querySelector('#changelist .results');"
                         " return box.scrollWidth <= box.clientWidth; })()")
    right_edge = page.evaluate("document.querySelector('#changelist .results').getBoundingClientRect().right")
    row = page.locator("#result_list tbody tr", has_text="claude-sonnet-4-5-eu-long-context")
    assert row.locator("td.field-kind_short").inner_text() == "chat"
    assert row.locator("td.field-provider_short").inner_text() == "anthropic"
    assert row.locator("td.field-catalog").inner_text() == "anthropic:claude-sonnet-4-5"
    for cell, value in (("input_usd", "3.3"), ("output_usd", "16.5")):
        box = row.locator(f"td.field-{cell}")
        assert box.inner_text() == value
        assert box.bounding_box()["x"] + box.bounding_box()["width"] <= right_edge  # in view, no scrolling
    embeddings = page.locator("#result_list tbody tr", has_text="text-embedding-3-small")
    assert embeddings.locator("td.field-kind_short").inner_text() == "embeddings"


@pytest.mark.postgres_only
def test_picking_a_catalog_model_fills_the_prices_which_stay_editable(live_server, admin_page):
    page = admin_page
    page.goto(f"{live_server.url}/admin/gateway/modelfacade/add/")
    page.fill("#id_name", "sonnet")
    page.select_option("#id_provider", "anthropic")
    page.fill("#id_base_url", "https://api.anthropic.com")
    page.select_option("#id_catalog_ref", "anthropic:claude-sonnet-4-5")
    filled = {name: page.input_value(f"#id_{name}") for name in (
        "input_price", "cached_input_price", "cache_write_price", "cache_write_extended_price", "output_price",
        "web_search_price", "file_search_price")}
    assert filled == {"input_price": "3", "cached_input_price": "0.3", "cache_write_price": "3.75",
                      "cache_write_extended_price": "6", "output_price": "15", "web_search_price": "10",
                      "file_search_price": "0"}
    rules = json.loads(page.input_value("#id_price_rules"))
    assert [t["above"] for t in rules["tiers"]] == [200_000] and list(rules["variants"]) == ["batch"]
    page.screenshot(path=str(SCREENSHOTS / "facade-catalog-picked.png"), full_page=True)
    page.fill("#id_output_price", "13.5")  # a negotiated discount
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/gateway/modelfacade/")
    facade = ModelFacade.objects.get(name="sonnet")
    assert (facade.input_price_micros, facade.output_price_micros, facade.cache_write_extended_price_micros,
            facade.web_search_price_micros) == (3_000_000, 13_500_000, 6_000_000, 10_000_000)
    assert facade.price_rules == rules
    assert (facade.catalog_ref, facade.catalog_version) == ("anthropic:claude-sonnet-4-5", "genai-prices 0.2.5")
