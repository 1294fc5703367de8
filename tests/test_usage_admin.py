"""The usage pages of the admin: network-wide, per user and the leaderboard show exactly the read
module's numbers, for every period; only staff with the usage permission see them."""

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from gateway.models import ApiKey
from usage.reads import queries
from usage import rollups
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many

PERIODS = ["7d", "30d", "90d"]
PAGES = ["/admin/usage/", "/admin/usage/leaderboard/"]


@pytest.fixture
def carol(db):
    """Staff with the usage permission only."""
    user = User.objects.create_user("carol", "carol@example.com", "carol-password", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usage_dashboard"))
    return user


@pytest.fixture
def dave(db):
    """Staff without the usage permission."""
    return User.objects.create_user("dave", "dave@example.com", "dave-password", is_staff=True)


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root", "root@example.com", "root-password")


@pytest.fixture
def history(alice, bob, gpt, claude):
    """Usage in the current and previous windows of every period, part of it rolled up."""
    now = timezone.now()
    ages = [timedelta(minutes=1), timedelta(hours=30), timedelta(days=4), timedelta(days=12), timedelta(days=45),
            timedelta(days=100), timedelta(days=170)]
    deltas = []
    for n, age in enumerate(ages):
        for user, facade, scale in [(alice, gpt, 1), (alice, claude, 3), (bob, gpt, 7 + n)]:
            deltas.append(UsageDelta(id=f"h{n}-{user.pk}-{facade.pk}", user_id=user.pk, facade_id=facade.pk,
                                     at=now - age, requests=scale, error_requests=n % 2, input_tokens=1000 * scale + n,
                                     cached_input_tokens=10 * n, output_tokens=300 * scale + n,
                                     cost_nanos=123_456_789 * scale + n))
    record_many(deltas)
    rollups.roll_up(until=now - timedelta(days=2))
    return deltas


def kpis(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-kpi="(\w+)">.*?data-value="([^"]*)"', html, re.S))


def table_rows(html: str, table_id: str, key: str) -> dict[str, list[str]]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(rf'<tr {key}="(\d+)">(.*?)</tr>', table, re.S)
    return {ident: re.findall(r'data-value="([^"]*)"', body) for ident, body in rows}


def chart_island(html: str) -> dict:
    return json.loads(re.search(r'<script id="usage-chart-data" type="application/json">(.*?)</script>', html,
                                re.S).group(1))


def expected_kpis(totals: queries.Totals) -> dict[str, str]:
    return {"spend": f"{totals.spend_usd:f}", "requests": str(totals.requests),
            "input_tokens": str(totals.input_tokens), "output_tokens": str(totals.output_tokens)}


def expected_facades(rows: list[queries.FacadeRow]) -> dict[str, list[str]]:
    return {str(r.facade_id): [str(r.totals.requests), str(r.totals.input_tokens), str(r.totals.output_tokens),
                               str(r.totals.reasoning_tokens), f"{r.totals.spend_usd}", f"{r.share}"] for r in rows}


def expected_chart(series: list[queries.DayPoint]) -> dict:
    return {"labels": [p.date.isoformat() for p in series], "spend": [float(p.totals.spend_usd) for p in series],
            "input": [p.totals.input_tokens for p in series], "output": [p.totals.output_tokens for p in series]}


@pytest.mark.parametrize("period", PERIODS)
def test_the_network_page_shows_the_read_modules_numbers(client, carol, history, period):
    client.force_login(carol)

    html = client.get(f"/admin/usage/?period={period}").content.decode()

    p = queries.resolve_window(period)
    summary = queries.summary(p)
    assert summary.totals.requests > 0 and summary.totals != summary.previous
    assert kpis(html) == expected_kpis(summary.totals)
    assert table_rows(html, "usage-by-model", "data-facade") == expected_facades(queries.by_facade(p))
    assert chart_island(html) == expected_chart(queries.daily_series(p))
    assert len(chart_island(html)["labels"]) == p.days


@pytest.mark.parametrize("period", PERIODS)
def test_a_users_page_shows_their_numbers_alone(client, carol, alice, history, period):
    client.force_login(carol)

    html = client.get(f"/admin/auth/user/{alice.pk}/usage/?period={period}").content.decode()

    p = queries.resolve_window(period)
    summary = queries.summary(p, user_id=alice.pk)
    assert summary.totals != queries.summary(p).totals
    assert kpis(html) == expected_kpis(summary.totals)
    assert table_rows(html, "usage-by-model", "data-facade") == expected_facades(queries.by_facade(p, user_id=alice.pk))
    assert chart_island(html) == expected_chart(queries.daily_series(p, user_id=alice.pk))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("by", ["tokens", "spend", "requests"])
def test_the_leaderboard_shows_the_read_modules_ranking(client, carol, history, period, by):
    client.force_login(carol)

    html = client.get(f"/admin/usage/leaderboard/?period={period}&by={by}").content.decode()

    rows = queries.leaderboard(queries.resolve_window(period), by=by)
    assert list(table_rows(html, "usage-leaderboard", "data-user")) == [str(r.user_id) for r in rows]
    assert table_rows(html, "usage-leaderboard", "data-user") == {
        str(r.user_id): [str(r.rank), str(r.totals.requests), str(r.totals.input_tokens), str(r.totals.output_tokens),
                         f"{r.totals.spend_usd}", f"{r.share}"] for r in rows}
    for r in rows:
        assert f'href="/admin/auth/user/{r.user_id}/usage/?period={period}">{r.username}<' in html


def test_the_leaderboard_shows_the_change_in_rank(client, carol, alice, bob, gpt):
    now = timezone.now()
    record_many([
        UsageDelta(id="a-then", user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(days=10), input_tokens=50),
        UsageDelta(id="b-then", user_id=bob.pk, facade_id=gpt.pk, at=now - timedelta(days=10), input_tokens=10),
        UsageDelta(id="a-now", user_id=alice.pk, facade_id=gpt.pk, at=now, input_tokens=10),
        UsageDelta(id="b-now", user_id=bob.pk, facade_id=gpt.pk, at=now, input_tokens=50),
        UsageDelta(id="c-now", user_id=carol.pk, facade_id=gpt.pk, at=now, input_tokens=1),
    ])
    client.force_login(carol)

    html = client.get("/admin/usage/leaderboard/?period=7d").content.decode()

    changes = dict(re.findall(r'<tr data-user="(\d+)">.*?class="usage-rank-change"[^>]*>([^<]*)<', html, re.S))
    assert changes == {str(bob.pk): "▲1", str(alice.pk): "▼1", str(carol.pk): "new"}


def test_the_leaderboard_pages_by_a_hundred(client, carol, gpt):
    now = timezone.now()
    users = User.objects.bulk_create([User(username=f"user{n:03d}") for n in range(105)])
    record_many([UsageDelta(id=f"u{n}", user_id=u.pk, facade_id=gpt.pk, at=now, input_tokens=1000 - n)
                 for n, u in enumerate(users)])
    client.force_login(carol)

    first = table_rows(client.get("/admin/usage/leaderboard/").content.decode(), "usage-leaderboard", "data-user")
    second_html = client.get("/admin/usage/leaderboard/?page=2").content.decode()
    second = table_rows(second_html, "usage-leaderboard", "data-user")

    assert list(first) == [str(u.pk) for u in users[:100]]
    assert list(second) == [str(u.pk) for u in users[100:]]
    assert [values[0] for values in second.values()] == ["101", "102", "103", "104", "105"]
    assert "105 users" in second_html and 'href="?page=1"' in second_html


def test_period_tabs_link_each_period_and_keep_the_ranking(client, carol):
    client.force_login(carol)

    html = client.get("/admin/usage/leaderboard/?period=30d&by=spend&page=1").content.decode()

    assert re.findall(r'href="\?([^"]*)" data-period="(\w+)"', html) == [
        ("period=7d&amp;by=spend", "7d"), ("period=30d&amp;by=spend", "30d"), ("period=90d&amp;by=spend", "90d")]
    assert 'data-period="30d" class="active" aria-current="page"' in html


def test_an_unknown_period_shows_the_last_7_days(client, carol, history):
    client.force_login(carol)

    html = client.get("/admin/usage/?period=1y").content.decode()

    assert kpis(html) == expected_kpis(queries.summary(queries.resolve_window("7d")).totals)
    assert 'data-period="7d" class="active"' in html


def test_kpis_are_in_the_html_with_a_compact_value_and_the_exact_one_in_a_tooltip(client, carol, alice, gpt):
    record_many([UsageDelta(id="big", user_id=alice.pk, facade_id=gpt.pk, at=timezone.now(), requests=1_234_567,
                            input_tokens=987_654_321, output_tokens=5_555, cost_nanos=1_234_565_000_001)])
    client.force_login(carol)

    html = client.get("/admin/usage/").content.decode()

    assert 'title="$1,234.565000001" data-value="1234.565000001">$1,234.57<' in html
    assert 'title="1,234,567" data-value="1234567">1.2M<' in html
    assert 'title="987,654,321" data-value="987654321">988M<' in html
    assert 'title="5,555" data-value="5555">5.6K<' in html
    assert "new this period" in html


def headers(html: str, table_id: str) -> list[str]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    return re.findall(r'<th scope="col"[^>]*>([^<]*)</th>', table)


def test_the_per_model_table_shows_searches_only_where_the_page_has_some(client, carol, alice, bob, gpt, claude):
    now = timezone.now()
    record_many([
        UsageDelta(id="w1", user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(minutes=3), requests=2,
                   input_tokens=1_000, output_tokens=100, web_search_calls=5, cost_nanos=50_000_000),
        UsageDelta(id="w2", user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(days=2), requests=1,
                   input_tokens=400, output_tokens=40, web_search_calls=1_234, cost_nanos=12_340_000_000),
        UsageDelta(id="w3", user_id=alice.pk, facade_id=claude.pk, at=now - timedelta(minutes=2), requests=1,
                   input_tokens=3_000, cache_write_tokens=1_000, cache_write_extended_tokens=1_000,
                   output_tokens=300, reasoning_tokens=20, cost_nanos=19_500_000),
        UsageDelta(id="w4", user_id=bob.pk, facade_id=claude.pk, at=now - timedelta(minutes=1), requests=1,
                   input_tokens=10, output_tokens=1, cost_nanos=45_000),
    ])
    rollups.roll_up(until=now - timedelta(days=1))
    client.force_login(carol)

    html = client.get("/admin/usage/").content.decode()

    assert headers(html, "usage-by-model") == ["Model", "Requests", "Input tokens", "Output tokens",
                                               "Reasoning tokens", "Web searches", "Spend", "Share"]
    # gpt-test: 2 + 1 requests, 1,000 + 400 input, 100 + 40 output, 5 + 1,234 searches, 50,000,000 +
    # 12,340,000,000 nanodollars of 12,409,545,000 (+ 19,500,000 + 45,000): 12,390,000,000 / 12,409,545,000
    # = 0.99842...; claude-test: 19,545,000 / 12,409,545,000 = 0.00157...
    assert table_rows(html, "usage-by-model", "data-facade") == {
        str(gpt.pk): ["3", "1400", "140", "0", "1239", "12.390000000", "0.9984"],
        str(claude.pk): ["2", "3010", "301", "20", "0", "0.019545000", "0.0016"],
    }
    assert ">1,239</td>" in html
    bobs = client.get(f"/admin/auth/user/{bob.pk}/usage/").content.decode()  # bob never searched
    assert headers(bobs, "usage-by-model") == ["Model", "Requests", "Input tokens", "Output tokens",
                                               "Reasoning tokens", "Spend", "Share"]
    assert table_rows(bobs, "usage-by-model", "data-facade") == {
        str(claude.pk): ["1", "10", "1", "0", "0.000045000", "1.0000"]}


def test_the_per_model_table_shows_file_searches_beside_web_searches(client, carol, alice, gpt):
    record_many([UsageDelta(id="f1", user_id=alice.pk, facade_id=gpt.pk, at=timezone.now(), requests=1,
                            input_tokens=20, output_tokens=2, file_search_calls=7, cost_nanos=17_500_000)])
    client.force_login(carol)

    html = client.get(f"/admin/auth/user/{alice.pk}/usage/").content.decode()

    assert headers(html, "usage-by-model")[4:7] == ["Reasoning tokens", "File searches", "Spend"]
    assert table_rows(html, "usage-by-model", "data-facade") == {
        str(gpt.pk): ["1", "20", "2", "0", "7", "0.017500000", "1.0000"]}


def test_the_change_is_against_the_previous_period(client, carol, alice, gpt):
    now = timezone.now()
    record_many([
        UsageDelta(id="before", user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(days=8), requests=4,
                   cost_nanos=200),
        UsageDelta(id="now", user_id=alice.pk, facade_id=gpt.pk, at=now, requests=5, cost_nanos=100),
    ])
    client.force_login(carol)

    html = client.get("/admin/usage/?period=7d").content.decode()

    changes = dict(re.findall(r'data-kpi="(\w+)">.*?class="usage-change[^"]*"\s*(?:data-change="([^"]*)")?', html,
                              re.S))
    assert changes == {"spend": "-50.0", "requests": "25.0", "input_tokens": "", "output_tokens": ""}
    assert "+25.0% vs previous" in html and "−50.0% vs previous" in html


def test_the_chart_data_is_a_json_island_and_the_charts_script_is_ours(client, carol, history):
    client.force_login(carol)

    html = client.get("/admin/usage/").content.decode()

    assert '<script id="usage-chart-data" type="application/json">' in html
    assert '/static/vendor/chart.js/chart.umd.min.js' in html and '/static/usage/dashboard.js' in html
    assert 'id="activity-trend"' in html and 'id="token-consumption"' in html
    assert "cdn" not in html.lower()


def test_a_users_page_lists_their_keys_and_budgets(client, carol, alice, bob):
    ApiKey.objects.create_key(alice, name="alice laptop")
    ApiKey.objects.create_key(bob, name="bob laptop")
    set_budget(username="alice", period="monthly", amount_usd=Decimal("25"), warn_percent=80, active=True)
    set_budget(username=None, period="daily", amount_usd=Decimal("2"), warn_percent=None, active=True)
    client.force_login(carol)

    html = client.get(f"/admin/auth/user/{alice.pk}/usage/").content.decode()

    assert "alice laptop" in html and "bob laptop" not in html
    budgets = re.search(r'id="usage-budgets">(.*?)</table>', html, re.S).group(1)
    assert "daily" in budgets and "default" in budgets
    assert "monthly" in budgets and "own budget" in budgets and "$25.00" in budgets


def test_a_users_change_page_links_to_their_usage_and_shows_their_spend(client, carol, alice, gpt):
    record_many([UsageDelta(id="s", user_id=alice.pk, facade_id=gpt.pk, at=timezone.now(), cost_nanos=1_239_000_000)])
    carol.user_permissions.add(Permission.objects.get(codename="view_user"))  # to open a user's page at all
    client.force_login(carol)

    html = client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()

    assert f'href="/admin/auth/user/{alice.pk}/usage/"' in html
    assert 'data-value="1.239000000"' in html and "$1.24" in html


def test_the_navigation_links_to_usage_and_the_leaderboard(client, carol):
    client.force_login(carol)

    html = client.get("/admin/").content.decode()

    assert 'href="/admin/usage/"' in html and 'href="/admin/usage/leaderboard/"' in html


def test_staff_without_the_permission_see_no_usage_links(client, dave):
    client.force_login(dave)

    html = client.get("/admin/").content.decode()

    assert "/admin/usage/" not in html


@pytest.mark.parametrize("url", PAGES)
def test_staff_without_the_permission_are_refused(client, dave, url):
    client.force_login(dave)

    assert client.get(url).status_code == 403


def test_staff_without_the_permission_are_refused_a_users_page(client, dave, alice, root):
    client.force_login(dave)

    assert client.get(f"/admin/auth/user/{alice.pk}/usage/").status_code == 403


@pytest.mark.parametrize("url", PAGES)
def test_non_staff_are_sent_to_the_login_page(client, alice, url):
    client.force_login(alice)

    response = client.get(url)

    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", PAGES)
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, url):
    response = client.get(url)

    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_superusers_see_every_page(client, root, alice):
    client.force_login(root)

    for url in [*PAGES, f"/admin/auth/user/{alice.pk}/usage/", f"/admin/auth/user/{alice.pk}/change/"]:
        assert client.get(url).status_code == 200, url


def test_a_missing_user_is_a_404(client, carol):
    client.force_login(carol)

    assert client.get("/admin/auth/user/999999/usage/").status_code == 404


def test_the_usage_page_shows_the_degraded_mode_banner_and_csv_links(client, carol, settings, tmp_path):
    from usage.degraded.buffer import BufferWriter
    from usage.ledger.delta import UsageDelta as Delta

    settings.USAGE_BUFFER_DIR = tmp_path
    client.force_login(carol)
    assert "usage-buffer-banner" not in client.get("/admin/usage/").content.decode()
    BufferWriter(tmp_path).append_many([Delta(id="pending-1", user_id=carol.pk, facade_id=1, at=timezone.now())])
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "x.buf").write_bytes(b"junk")
    html = " ".join(client.get("/admin/usage/?period=30d").content.decode().split())
    assert 'id="usage-buffer-banner"' in html and "1 delta in 1 file" in html and "1 damaged buffer file" in html
    assert "/api/usage/series/?period=30d&amp;format=csv" in html
    assert "format=csv" in client.get("/admin/usage/leaderboard/").content.decode()
