"""Usage per API key in headless Chromium: from a user's page to a key's page, whose KPI values equal
the deltas written to that key and whose charts draw; the leaderboard's "API keys" tab. Screenshots in var/."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from gateway.models import ApiKey
from tests.test_admin_browser import CANVAS_PIXELS, SCREENSHOTS, browser_page, wait_for_charts  # noqa: F401  (a fixture)
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.reserved import RESERVED_KEY_NAME


@pytest.mark.postgres_only
def test_a_keys_page_is_reached_from_its_owners_page_and_draws_its_charts(live_server, browser_page, alice, gpt):
    User.objects.create_superuser("root", "root@example.com", "root-password")
    laptop, _ = ApiKey.objects.create_key(alice, name="laptop")
    ci, _ = ApiKey.objects.create_key(alice, name="ci")
    now = timezone.now()
    deltas = [UsageDelta(id=f"b{d}-{key.pk}", user_id=alice.pk, facade_id=gpt.pk, key_id=key.pk,
                         at=now - timedelta(days=d, minutes=3), requests=scale, input_tokens=1000 * scale + d,
                         output_tokens=300 * scale + d, cost_nanos=12_345_678 * scale + d)
              for d in range(0, 6) for key, scale in ((laptop, 2), (ci, 5))]
    deltas.append(UsageDelta(id="before", user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(hours=5),
                             input_tokens=7, output_tokens=3, cost_nanos=999))
    record_many(deltas)
    mine = [d for d in deltas if d.key_id == laptop.pk]

    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/auth/user/{alice.pk}/usage/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-password")
    page.click("input[type=submit]")
    page.wait_for_url(f"**/admin/auth/user/{alice.pk}/usage/")
    assert RESERVED_KEY_NAME in page.inner_text("#usage-api-keys")
    page.click(f"#usage-keys tr[data-key='{laptop.pk}'] th a")
    page.wait_for_url(f"**/admin/gateway/apikey/{laptop.pk}/usage/**")
    values = {kpi: page.get_attribute(f"[data-kpi='{kpi}'] .usage-card-value", "data-value")
              for kpi in ("spend", "requests", "input_tokens", "output_tokens")}
    assert values == {"spend": f"{sum(d.cost_nanos for d in mine) / 10**9:.9f}",
                      "requests": str(sum(d.requests for d in mine)),
                      "input_tokens": str(sum(d.input_tokens for d in mine)),
                      "output_tokens": str(sum(d.output_tokens for d in mine))}
    wait_for_charts(page)
    assert page.evaluate(CANVAS_PIXELS, "activity-trend") > 100
    assert page.evaluate(CANVAS_PIXELS, "token-consumption") > 100
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "usage-key.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/usage/leaderboard/?period=7d&by=spend")
    page.click("a[data-group='key']")
    page.wait_for_url("**group=key**")
    ranked = page.eval_on_selector_all("#usage-leaderboard tbody tr", "rows => rows.map(r => r.dataset.key)")
    reserved = ApiKey.objects.get(user=alice, name=RESERVED_KEY_NAME)
    assert ranked == [str(ci.pk), str(laptop.pk), str(reserved.pk)]
    page.screenshot(path=str(SCREENSHOTS / "usage-leaderboard-keys.png"), full_page=True)
