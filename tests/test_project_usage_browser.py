"""A project's usage in headless Chromium (#30): from the project list to the project's page, whose KPI
values equal the deltas written to the project's keys and whose charts draw; the network page's
per-project table leads there too; the leaderboard's "Projects" tab ranks projects. Screenshots in
var/screenshots/ (usage-project.png, usage-network-projects.png, usage-leaderboard-projects.png)."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from gateway.models import DEFAULT_PROJECT_ID, ApiKey, Project
from tests.test_admin_browser import CANVAS_PIXELS, SCREENSHOTS, browser_page, wait_for_charts  # noqa: F401  (a fixture)
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many


@pytest.mark.postgres_only
def test_a_projects_page_is_reached_from_the_project_list_and_draws_its_charts(live_server, browser_page, alice, bob,
                                                                                gpt, claude):
    User.objects.create_superuser("root", "root@example.com", "root-password")
    apollo = Project.objects.create_project("Apollo", "The moon shot.", owners=[alice], members=[bob])
    gemini = Project.objects.create_project("Gemini", members=[bob])
    laptop, _ = ApiKey.objects.create_key(alice, name="laptop", project=apollo)
    ci, _ = ApiKey.objects.create_key(bob, name="ci", project=apollo)
    batch, _ = ApiKey.objects.create_key(bob, name="batch", project=gemini)
    other, _ = ApiKey.objects.create_key(alice, name="other")  # the Default project
    now = timezone.now()
    deltas = [UsageDelta(id=f"b{d}-{key.pk}", user_id=key.user_id, facade_id=facade.pk, key_id=key.pk,
                         at=now - timedelta(days=d, minutes=3), requests=scale, input_tokens=1000 * scale + d,
                         output_tokens=300 * scale + d, cost_nanos=12_345_678 * scale + d)
              for d in range(0, 6) for key, facade, scale in ((laptop, gpt, 2), (ci, claude, 5), (batch, gpt, 11),
                                                              (other, claude, 3))]
    record_many(deltas)
    mine = [d for d in deltas if d.key_id in (laptop.pk, ci.pk)]

    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/gateway/project/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/gateway/project/")
    page.click(f"a[href='/admin/gateway/project/{apollo.pk}/usage/']")
    page.wait_for_url(f"**/admin/gateway/project/{apollo.pk}/usage/")
    values = {kpi: page.get_attribute(f"[data-kpi='{kpi}'] .usage-card-value", "data-value")
              for kpi in ("spend", "requests", "input_tokens", "output_tokens")}
    assert values == {"spend": f"{sum(d.cost_nanos for d in mine) / 10**9:.9f}",
                      "requests": str(sum(d.requests for d in mine)),
                      "input_tokens": str(sum(d.input_tokens for d in mine)),
                      "output_tokens": str(sum(d.output_tokens for d in mine))}
    keys = page.eval_on_selector_all("#usage-keys tbody tr", "rows => rows.map(r => r.dataset.key)")
    assert keys == [str(ci.pk), str(laptop.pk)]  # by spend
    members = page.eval_on_selector_all("#usage-members tbody tr", "rows => rows.map(r => r.dataset.role)")
    assert members == ["owner", "member"]
    wait_for_charts(page)
    assert page.evaluate(CANVAS_PIXELS, "activity-trend") > 100
    assert page.evaluate(CANVAS_PIXELS, "token-consumption") > 100
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "usage-project.png"), full_page=True)

    page.click("a[data-period='30d']")
    page.wait_for_url("**period=30d**")
    assert page.get_attribute("[data-kpi='requests'] .usage-card-value", "data-value") == str(
        sum(d.requests for d in mine))

    page.goto(f"{live_server.url}/admin/usage/?period=7d")
    projects = page.eval_on_selector_all("#usage-by-project tbody tr", "rows => rows.map(r => r.dataset.project)")
    assert projects == [str(gemini.pk), str(apollo.pk), str(DEFAULT_PROJECT_ID)]  # 11, 2 + 5, 3 per delta
    page.locator("#usage-projects").screenshot(path=str(SCREENSHOTS / "usage-network-projects.png"))
    page.click(f"#usage-by-project tr[data-project='{apollo.pk}'] th a")
    page.wait_for_url(f"**/admin/gateway/project/{apollo.pk}/usage/?period=7d")

    page.goto(f"{live_server.url}/admin/usage/leaderboard/?period=7d&by=requests")
    page.click("a[data-group='project']")
    page.wait_for_url("**group=project**")
    ranked = page.eval_on_selector_all("#usage-leaderboard tbody tr", "rows => rows.map(r => r.dataset.project)")
    assert ranked == [str(gemini.pk), str(apollo.pk), str(DEFAULT_PROJECT_ID)]
    page.screenshot(path=str(SCREENSHOTS / "usage-leaderboard-projects.png"), full_page=True)
