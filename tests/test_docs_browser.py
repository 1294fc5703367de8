"""The "Your gateway URL" box in headless Chromium: pin on one page, see another page's examples
and route links rewritten, survive a reload, clear back to the default."""

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: .ci/run installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser.new_page()
        browser.close()


@pytest.mark.postgres_only
def test_a_pinned_gateway_url_rewrites_every_docs_page(live_server, page):
    origin = live_server.url
    page.goto(f"{origin}/docs/quickstart/")
    assert origin + "/v1/chat/completions" in page.locator("pre.example").first.inner_text()
    page.fill("#gateway-url", "https://gw.example.com:8443/")
    page.click("#gateway-url-form button[type=submit]")
    assert "https://gw.example.com:8443/v1/chat/completions" in page.locator("pre.example").first.inner_text()

    page.goto(f"{origin}/docs/usage/")  # another page: rewritten from localStorage
    examples = page.locator("pre.example").all_inner_texts()
    assert examples and all("https://gw.example.com:8443/api/" in e for e in examples[:4])
    link = page.locator("a[data-route='/admin/usage/']")
    assert link.get_attribute("href") == "https://gw.example.com:8443/admin/usage/"
    assert page.locator("header nav a").first.get_attribute("href") == "/docs/"  # docs links stay
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "docs-pinned.png"), full_page=True)

    page.reload()
    assert "https://gw.example.com:8443/api/" in page.locator("pre.example").first.inner_text()
    for bad in ("ftp://nope", "gw.example.com", "https://gw.example.com/v1"):  # scheme, host, no path
        page.fill("#gateway-url", bad)
        page.click("#gateway-url-form button[type=submit]")
        assert "Not a gateway URL" in page.inner_text("#gateway-url-status"), bad
    assert "https://gw.example.com:8443/api/" in page.locator("pre.example").first.inner_text()

    page.click("#gateway-url-clear")
    assert origin + "/api/" in page.locator("pre.example").first.inner_text()
    assert link.get_attribute("href") == origin + "/admin/usage/"
    page.reload()
    assert origin + "/api/" in page.locator("pre.example").first.inner_text()
