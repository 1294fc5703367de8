"""Fractions of a cent in headless Chromium: the Spend card and the Activity Trend's axis and tooltip
show sub-cent spend with enough digits to read it, never as "$0.00". Screenshot in var/."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from tests.test_admin_browser import SCREENSHOTS, browser_page  # noqa: F401 (a fixture)
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many

Y_TICKS = """() => Chart.getChart("activity-trend").scales.y.ticks.map((tick) => [tick.value, tick.label])"""
TOOLTIP = """(y) => Chart.getChart("activity-trend").options.plugins.tooltip.callbacks.label(
    {dataset: {label: "Spend"}, parsed: {y}})"""


@pytest.mark.postgres_only
def test_sub_cent_spend_reads_on_the_card_the_axis_and_the_tooltip(live_server, browser_page, alice, gpt):
    User.objects.create_superuser("root", "root@example.com", "root-password")
    now = timezone.now()
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(days=d, minutes=3),
                            input_tokens=1000, output_tokens=300, cost_nanos=700_000) for d in (1, 3, 5)])  # $0.0007 each
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/usage/%3Fperiod%3D7d")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/usage/?period=7d")

    spend = page.locator("[data-kpi='spend'] .usage-card-value")
    assert spend.inner_text() == "$0.0021"
    assert spend.get_attribute("data-value") == "0.002100000"

    page.wait_for_function("() => window.Chart !== undefined && Chart.getChart('activity-trend') !== undefined")
    ticks = page.evaluate(Y_TICKS)
    labels = [label for _, label in ticks]
    assert len(ticks) >= 3 and ticks[0] == [0, "$0"]
    assert len(set(labels)) == len(labels) and "$0.00" not in labels, labels
    for value, label in ticks[1:]:  # each label is its tick's value, exactly
        assert label.startswith("$") and Decimal(label[1:]) == Decimal(repr(value)).quantize(Decimal(label[1:])), ticks
    assert page.evaluate(TOOLTIP, 0.0007) == "Spend: $0.00070"
    assert page.evaluate(TOOLTIP, 0) == "Spend: $0"
    assert page.evaluate(TOOLTIP, 1234.565) == "Spend: $1,234.57"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "usage-sub-cent.png"), full_page=True)
