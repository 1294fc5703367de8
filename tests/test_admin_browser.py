"""The usage pages in headless Chromium: log in, switch periods, KPI values equal the read
module's, both charts draw, the user page and the leaderboard render. Screenshots in var/."""

import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from tests.test_docs_browser import ARGS, CHROMIUM
from usage.reads import queries
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many

SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
CANVAS_PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) drawn++;
  return drawn;
}"""


def wait_for_charts(page, ids=("activity-trend", "token-consumption"), pixels: int = 100) -> None:
    """Wait until Chart.js has drawn each canvas (more than `pixels` painted), not for a fixed time:
    a loaded machine drew later than a 300 ms pause allowed, an idle one sooner."""
    page.wait_for_function("() => window.Chart !== undefined")
    page.wait_for_function(f"([ids, pixels]) => ids.every(id => ({CANVAS_PIXELS})(id) > pixels)",
                           arg=[list(ids), pixels], timeout=15_000)


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM reads are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 1000})
        browser.close()


@pytest.mark.postgres_only
def test_the_usage_pages_render_exact_numbers_and_draw_their_charts(live_server, browser_page, alice, gpt, claude):
    User.objects.create_superuser("root", "root@example.com", "root-password")
    now = timezone.now()
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, facade_id=(gpt if d % 2 else claude).pk,
                            at=now - timedelta(days=d, minutes=3), input_tokens=1000 + d, output_tokens=300 + d,
                            cost_nanos=12_345_678 * (d + 1)) for d in range(0, 60, 2)])
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/usage/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/usage/")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for key in ("7d", "30d", "90d"):
        page.click(f"a[data-period='{key}']")
        page.wait_for_url(f"**period={key}")
        totals = queries.summary(queries.resolve_window(key)).totals
        values = {kpi: page.get_attribute(f"[data-kpi='{kpi}'] .usage-card-value", "data-value")
                  for kpi in ("spend", "requests", "input_tokens", "output_tokens")}
        assert Decimal(values["spend"]) == totals.spend_usd
        assert (int(values["requests"]), int(values["input_tokens"]), int(values["output_tokens"])) == (
            totals.requests, totals.input_tokens, totals.output_tokens)
        wait_for_charts(page)
        assert page.evaluate(CANVAS_PIXELS, "activity-trend") > 100
        assert page.evaluate(CANVAS_PIXELS, "token-consumption") > 100
        page.screenshot(path=str(SCREENSHOTS / f"usage-{key}.png"), full_page=True)
    page.goto(f"{live_server.url}/admin/auth/user/{alice.pk}/usage/?period=90d")
    mine = queries.summary(queries.resolve_window("90d"), alice.pk).totals
    assert int(page.get_attribute("[data-kpi='requests'] .usage-card-value", "data-value")) == mine.requests
    page.screenshot(path=str(SCREENSHOTS / "usage-user.png"), full_page=True)
    page.goto(f"{live_server.url}/admin/usage/leaderboard/?period=90d&by=spend")
    assert "alice" in page.inner_text("#content-main")
    page.screenshot(path=str(SCREENSHOTS / "usage-leaderboard.png"), full_page=True)
