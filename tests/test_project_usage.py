"""A project's usage (#30) is its keys' usage: usage.reads.queries read per project, against an oracle.

Two projects (Apollo: a key of alice's and one of bob's; Gemini: a key of alice's), a key in the
Default project, and bob's keyless deltas, which land on his reserved key, in the Default project.
Every expected number is a plain Python sum over the deltas the test wrote, keyed by the project
the test put each key in; the reads mix month, day, hour and 5-minute rows, late deltas behind the
watermark included. Breaks these tests catch (each tried once): the project filter left out of
usage.sql.segment_filters (every project reads everyone's numbers); sums per project joined on
the key's user instead of its project; the leaderboard's "project" group ranking keys.
"""

import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from gateway.models import DEFAULT_PROJECT_ID, ApiKey, Project
from usage.reads import engine, queries
from usage import rollups
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.reserved import reserved_key_digest
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage

FIELDS = ("requests", "error_requests", "estimated_requests", "input_tokens", "cached_input_tokens",
          "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_nanos")
NOW = datetime(2026, 4, 2, 10, 0, tzinfo=UTC)  # UTC: 90d is [2026-01-03, now), previous [2025-10-05, 2026-01-02 10:00)
ROLLED_UNTIL = datetime(2026, 4, 2, 8, 0, tzinfo=UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make(i: int, user, key, facade, at: datetime) -> UsageDelta:
    """Delta number i: counters that differ per delta (cost 1,000,003 + i * 7919), so a miscount shows."""
    return UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, key_id=key.pk if key else None, facade_id=facade.pk,
                      at=at, requests=1 + i % 2, error_requests=int(i % 5 == 0), estimated_requests=int(i % 7 == 3),
                      input_tokens=1000 + 37 * i, cached_input_tokens=i % 11, cache_write_tokens=i % 3,
                      output_tokens=200 + 13 * i, reasoning_tokens=i % 17, cost_nanos=1_000_003 + i * 7919)


def sums(deltas) -> dict:
    out = dict.fromkeys(FIELDS, 0)
    for d in deltas:
        for name in FIELDS:
            out[name] += getattr(d, name)
    return out


def got(totals) -> dict:
    return {name: getattr(totals, name) for name in FIELDS}


def share(part: int, whole: int) -> Decimal:
    return (Decimal(part) / whole).quantize(Decimal("0.0001"))


@pytest.fixture
def world(settings, alice, bob, gpt, claude):
    """The projects, keys and deltas: a delta every 29 h 17 min from before the previous 90 days, every
    3 h 7 min in the last three weeks, to past now, rotating over five keys (bob's keyless deltas among
    them) and two facades; rolled up to 2026-04-02 08:00, then late deltas behind the watermark at
    every level. (Few deltas: the rollup's time grows with the hours that have rows.)"""
    settings.TIME_ZONE = "UTC"
    apollo = Project.objects.create_project("Apollo", owners=[alice], members=[bob])
    gemini = Project.objects.create_project("Gemini", members=[alice])
    a1, _ = ApiKey.objects.create_key(alice, "a1", project=apollo)
    b1, _ = ApiKey.objects.create_key(bob, "b1", project=apollo)
    g1, _ = ApiKey.objects.create_key(alice, "g1", project=gemini)
    d1, _ = ApiKey.objects.create_key(alice, "d1")  # the Default project
    plan = [(alice, a1), (bob, b1), (alice, g1), (alice, d1), (bob, None)]  # None: bob's reserved key
    deltas, at, i = [], utc(2025, 10, 1, 0, 7), 0
    while at < NOW + timedelta(hours=2):
        user, key = plan[i % len(plan)]
        deltas.append(make(i, user, key, (gpt, claude)[(i // 5) % 2], at))
        at += timedelta(hours=3, minutes=7) if at >= NOW - timedelta(days=21) else timedelta(hours=29, minutes=17)
        i += 1
    record_many(deltas)
    rollups.roll_up(until=ROLLED_UNTIL, now=NOW)
    assert rollups.watermark() == ROLLED_UNTIL
    late = [make(i + n, *plan[n % len(plan)], gpt, at) for n, at in enumerate([
        utc(2026, 2, 14, 12, 3),  # a rolled month
        utc(2026, 1, 10, 6),  # a rolled day
        utc(2026, 4, 2, 3, 59, 59),  # a rolled hour
        utc(2026, 1, 2, 9, 59, 59),  # the previous window's last second
        utc(2026, 1, 3),  # the window's first second
    ])]
    record_many(late)
    reserved = ApiKey.objects.get(digest=reserved_key_digest(bob.pk))
    project_of = {a1.pk: apollo.pk, b1.pk: apollo.pk, g1.pk: gemini.pk, d1.pk: DEFAULT_PROJECT_ID,
                  reserved.pk: DEFAULT_PROJECT_ID}
    for d in deltas + late:
        if d.key_id is None:
            object.__setattr__(d, "key_id", reserved.pk)  # where the ledger put it
    return {"apollo": apollo, "gemini": gemini, "keys": (a1, b1, g1, d1, reserved), "reserved": reserved,
            "project_of": project_of, "deltas": deltas + late}


def of_project(world, project_id, lo, hi):
    return [d for d in world["deltas"] if world["project_of"][d.key_id] == project_id and lo <= d.at < hi]


PROJECTS = ["apollo", "gemini", "default"]


def project_id(world, name):
    return DEFAULT_PROJECT_ID if name == "default" else world[name].pk


def test_a_projects_reads_are_its_keys_deltas_at_every_level(world, gpt, claude):
    """summary (and the previous window), totals_between, daily_series, by_facade and by_key with
    project_id, for each project and window, over month, day, hour and 5-minute rows."""
    checked = 0
    for period in ("7d", "30d", "90d"):
        window = queries.resolve_window(period, NOW)
        if period == "90d":
            levels = {model for model, _, _ in engine.segments(window.start, window.end, rollups.watermark())}
            assert levels == {MonthlyUsage, DailyUsage, HourlyUsage, FiveMinuteUsage}
        for name in PROJECTS:
            pid = project_id(world, name)
            inside = of_project(world, pid, window.start, window.end)
            summary = queries.summary(window, project_id=pid)
            assert got(summary.totals) == sums(inside), (period, name)
            assert got(summary.previous) == sums(of_project(world, pid, window.previous_start, window.previous_end))
            assert summary.totals.requests > 0 and summary.previous.requests > 0  # the numbers compared are not empty
            assert queries.totals_between(window.start, window.end, project_id=pid) == summary.totals

            series = queries.daily_series(window, project_id=pid)
            assert [p.date for p in series] == window.dates
            assert {p.date: got(p.totals) for p in series} == {
                day: sums(d for d in inside if d.at.date() == day) for day in window.dates}, (period, name)

            facades = {row.facade_name: got(row.totals) for row in queries.by_facade(window, project_id=pid)}
            assert facades == {f.name: sums(d for d in inside if d.facade_id == f.pk) for f in (gpt, claude)
                               if any(d.facade_id == f.pk for d in inside)}, (period, name)
            page = queries.page_reads(window, project_id=pid, with_keys=True)  # the pages' one round trip
            assert (page.summary, page.facades, page.keys, page.series) == (
                summary, queries.by_facade(window, project_id=pid), queries.by_key(window, project_id=pid), series)
            keys = {row.key_id: got(row.totals) for row in queries.by_key(window, project_id=pid)}
            assert keys == {kid: sums(d for d in inside if d.key_id == kid) for kid, p in world["project_of"].items()
                            if p == pid and any(d.key_id == kid for d in inside)}, (period, name)
            checked += 1
    assert checked == 9
    window = queries.resolve_window("90d", NOW)
    assert [d.date for d in queries.daily_series(window, project_id=world["apollo"].pk)][0] == date(2026, 1, 3)


def test_by_project_and_the_project_leaderboard_rank_every_project_exactly(world, bob):
    for period in ("7d", "90d"):
        window = queries.resolve_window(period, NOW)
        now = {name: sums(of_project(world, project_id(world, name), window.start, window.end)) for name in PROJECTS}
        before = {name: sums(of_project(world, project_id(world, name), window.previous_start, window.previous_end))
                  for name in PROJECTS}
        projects = {name: Project.objects.get(pk=project_id(world, name)) for name in PROJECTS}

        whole = sum(v["cost_nanos"] for v in now.values())
        rows = queries.by_project(window)
        assert [(r.project_id, r.public_id, r.name, got(r.totals), r.share) for r in rows] == sorted(
            [(p.pk, p.public_id, p.name, now[n], share(now[n]["cost_nanos"], whole)) for n, p in projects.items()],
            key=lambda t: (-t[3]["cost_nanos"], t[1]))
        assert sum((r.totals for r in rows), queries.Totals()) == queries.summary(window).totals  # each key is in one

        def ranked(values):
            return sorted(PROJECTS, key=lambda n: (-values[n]["requests"], project_id(world, n)))

        board = queries.leaderboard(window, "requests", group="project")
        whole = sum(v["requests"] for v in now.values())
        assert [(r.rank, r.previous_rank, r.project_id, r.public_id, r.name, r.user_id, got(r.totals), r.share)
                for r in board] == [
            (rank, ranked(before).index(n) + 1, projects[n].pk, projects[n].public_id, projects[n].name, None, now[n],
             share(now[n]["requests"], whole)) for rank, n in enumerate(ranked(now), 1)]
        assert queries.leaderboard_count(window, group="project") == 3
        assert [r.project_id for r in queries.leaderboard(window, "requests", limit=1, offset=1, group="project")] == [
            projects[ranked(now)[1]].pk]

    # The reserved key of a user (bob's keyless deltas) is in the Default project, listed as reserved.
    reserved = world["reserved"]
    assert reserved.project_id == DEFAULT_PROJECT_ID
    rows = {row.key_id: row for row in queries.by_key(window, project_id=DEFAULT_PROJECT_ID)}
    assert rows[reserved.pk].reserved and rows[reserved.pk].username == "bob"
    assert got(rows[reserved.pk].totals) == sums(d for d in world["deltas"]
                                                 if d.key_id == reserved.pk and window.start <= d.at < NOW)


def test_a_project_without_keys_reads_zero_and_is_not_listed(alice, gpt):
    key, _ = ApiKey.objects.create_key(alice)
    record_many([make(1, alice, key, gpt, NOW - timedelta(hours=1))])
    empty = Project.objects.create_project("Empty", owners=[alice])
    window = queries.resolve_window("7d", NOW)
    assert queries.summary(window).totals.requests == 2
    assert queries.summary(window, project_id=empty.pk).totals == queries.Totals()
    assert queries.daily_series(window, project_id=empty.pk)[-1].totals == queries.Totals()
    assert queries.by_key(window, project_id=empty.pk) == []
    assert queries.by_facade(window, project_id=empty.pk) == []
    assert [(r.project_id, r.totals.requests) for r in queries.by_project(window)] == [(DEFAULT_PROJECT_ID, 2)]


# --- the admin's pages: the project page, the network page's table, the leaderboard -------------


@pytest.fixture
def carol(db):
    """Staff with the usage permission only."""
    user = User.objects.create_user("carol", "carol@example.com", is_staff=True)  # no password: force_login
    user.user_permissions.add(Permission.objects.get(codename="view_usage_dashboard"),
                              Permission.objects.get(codename="view_project"))
    return user


@pytest.fixture
def dave(db):
    """Staff who may see projects but not usage."""
    user = User.objects.create_user("dave", "dave@example.com", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_project"))
    return user


@pytest.fixture
def recent(settings, alice, bob, gpt, claude):
    """Usage at ages from a minute to 170 days before now (the pages read the clock), over the same
    projects and keys as `world`, rolled up to two days ago."""
    settings.TIME_ZONE = "UTC"
    apollo = Project.objects.create_project("Apollo", owners=[alice], members=[bob])
    gemini = Project.objects.create_project("Gemini", members=[alice])
    a1, _ = ApiKey.objects.create_key(alice, "a1", project=apollo)
    b1, _ = ApiKey.objects.create_key(bob, "b1", project=apollo)
    g1, _ = ApiKey.objects.create_key(alice, "g1", project=gemini)
    d1, _ = ApiKey.objects.create_key(alice, "d1")
    plan = [(alice, a1), (bob, b1), (alice, g1), (alice, d1), (bob, None)]
    now = timezone.now()
    ages = [timedelta(minutes=1), timedelta(hours=30), timedelta(days=4), timedelta(days=12), timedelta(days=45),
            timedelta(days=100), timedelta(days=170)]
    deltas = [make(7 * n + k, *plan[(n + k) % len(plan)], (gpt, claude)[k % 2], now - age)
              for n, age in enumerate(ages) for k in range(len(plan))]
    record_many(deltas)
    rollups.roll_up(until=now - timedelta(days=2), now=now)
    reserved = ApiKey.objects.get(digest=reserved_key_digest(bob.pk))
    for d in deltas:
        if d.key_id is None:
            object.__setattr__(d, "key_id", reserved.pk)
    project_of = {a1.pk: apollo.pk, b1.pk: apollo.pk, g1.pk: gemini.pk, d1.pk: DEFAULT_PROJECT_ID,
                  reserved.pk: DEFAULT_PROJECT_ID}
    return {"apollo": apollo, "gemini": gemini, "reserved": reserved, "project_of": project_of, "deltas": deltas,
            "keys": {a1.pk: a1, b1.pk: b1, g1.pk: g1, d1.pk: d1, reserved.pk: reserved}}


def data_values(html: str, table_id: str, attribute: str) -> dict[str, list[str]]:
    """{row's attribute: its cells' data-value attributes}, in the table's order."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    return {ident: re.findall(r'data-value="([^"]*)"', body)
            for ident, body in re.findall(rf'<tr {attribute}="(\d+)"[^>]*>(.*?)</tr>', table, re.S)}


def cells(values: dict, whole: int | None = None, part: str = "cost_nanos") -> list[str]:
    """What _usage_cells shows: requests, input, output, spend (USD, 9 decimals), and the share."""
    spend = Decimal(values["cost_nanos"]) / 10**9
    out = [str(values["requests"]), str(values["input_tokens"]), str(values["output_tokens"]),
           f"{spend.quantize(Decimal('0.000000001')):f}"]
    return out if whole is None else out + [f"{share(values[part], whole)}"]


def per_project(recent, lo, hi) -> dict[int, dict]:
    return {pid: sums(d for d in recent["deltas"] if recent["project_of"][d.key_id] == pid and lo <= d.at < hi)
            for pid in (recent["apollo"].pk, recent["gemini"].pk, DEFAULT_PROJECT_ID)}


def test_a_projects_page_shows_its_keys_usage_exactly(client, carol, recent, gpt, claude):
    client.force_login(carol)
    for period in ("7d", "30d", "90d"):
        check_project_page(client, recent, period, gpt, claude)


def test_a_projects_page_shows_its_budgets_with_its_spend(client, carol, recent):
    apollo = recent["apollo"]
    set_budget(project_id=apollo.public_id, period="monthly", amount_usd=Decimal("12.5"), warn_percent=None,
               active=True)
    set_budget(project_id=recent["gemini"].public_id, period="daily", amount_usd=Decimal("1"), warn_percent=None,
               active=True)
    client.force_login(carol)

    html = client.get(f"/admin/gateway/project/{apollo.pk}/usage/").content.decode()

    month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)  # UTC
    spent = sums(d for d in recent["deltas"] if recent["project_of"][d.key_id] == apollo.pk and d.at >= month_start)
    assert spent["cost_nanos"] > 0
    budgets = re.search(r'id="usage-budgets">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r"<th scope=\"row\">(\w+)</th>", budgets) == ["monthly"]  # Gemini's budget is not Apollo's
    assert re.findall(r'data-value="(\d+)"', budgets) == ["12500000000", str(spent["cost_nanos"])]


def check_project_page(client, recent, period, gpt, claude):
    apollo = recent["apollo"]
    response = client.get(f"/admin/gateway/project/{apollo.pk}/usage/?period={period}")

    assert response.status_code == 200
    html = response.content.decode()
    window = queries.resolve_window(period)
    mine = [d for d in recent["deltas"] if recent["project_of"][d.key_id] == apollo.pk]
    inside = [d for d in mine if window.start <= d.at < window.end]
    total = sums(inside)
    assert total["requests"] > 0
    assert dict(re.findall(r'data-kpi="(\w+)">.*?data-value="([^"]*)"', html, re.S)) == {
        "spend": cells(total)[3], "requests": str(total["requests"]), "input_tokens": str(total["input_tokens"]),
        "output_tokens": str(total["output_tokens"])}
    chart = json.loads(re.search(r'<script id="usage-chart-data" type="application/json">(.*?)</script>',
                                 html, re.S).group(1))
    assert chart["labels"] == [day.isoformat() for day in window.dates]
    assert chart["input"] == [sums(d for d in inside if d.at.date() == day)["input_tokens"] for day in window.dates]
    assert chart["output"] == [sums(d for d in inside if d.at.date() == day)["output_tokens"] for day in window.dates]
    models = {str(f.pk): sums(d for d in inside if d.facade_id == f.pk) for f in (gpt, claude)}
    models = {fid: v for fid, v in models.items() if v["requests"]}
    whole = sum(v["cost_nanos"] for v in models.values())
    assert data_values(html, "usage-by-model", "data-facade") == {
        fid: [*cells(v)[:3], str(v["reasoning_tokens"]), *cells(v, whole)[3:]] for fid, v in models.items()}
    keys = {str(kid): sums(d for d in inside if d.key_id == kid) for kid in recent["keys"]
            if recent["project_of"][kid] == apollo.pk}
    keys = {kid: v for kid, v in keys.items() if v["requests"]}
    assert data_values(html, "usage-keys", "data-key") == {kid: cells(v, whole) for kid, v in sorted(
        keys.items(), key=lambda item: -item[1]["cost_nanos"])}
    assert re.findall(r'<tr data-user="(\d+)" data-role="(\w+)">', html) == [
        (str(m.user_id), m.role) for m in sorted(apollo.members.all(), key=lambda m: m.role != "owner")]
    assert f"<code>{apollo.public_id}</code>" in html


def test_the_network_page_lists_every_project_with_usage_exactly(client, carol, recent):
    client.force_login(carol)
    for period in ("7d", "90d"):
        check_network_page(client, recent, period)


def check_network_page(client, recent, period):
    html = client.get(f"/admin/usage/?period={period}").content.decode()
    window = queries.resolve_window(period)
    expected = per_project(recent, window.start, window.end)
    whole = sum(v["cost_nanos"] for v in expected.values())
    public_ids = dict(Project.objects.values_list("pk", "public_id"))
    order = sorted(expected, key=lambda pid: (-expected[pid]["cost_nanos"], public_ids[pid]))  # by spend, then id
    rows = data_values(html, "usage-by-project", "data-project")
    assert rows == {str(pid): cells(expected[pid], whole) for pid in order}
    assert list(rows) == [str(pid) for pid in order]
    assert f'href="/admin/gateway/project/{recent["apollo"].pk}/usage/?period={period}">Apollo<' in html


def test_the_leaderboard_ranks_projects(client, carol, recent):
    client.force_login(carol)
    for by in ("tokens", "spend", "requests"):
        check_leaderboard(client, recent, by)


def check_leaderboard(client, recent, by):
    html = client.get(f"/admin/usage/leaderboard/?period=30d&by={by}&group=project").content.decode()

    window = queries.resolve_window("30d")
    expected = per_project(recent, window.start, window.end)

    def metric(v):
        return {"tokens": v["input_tokens"] + v["output_tokens"], "spend": v["cost_nanos"], "requests": v["requests"]}[by]

    ranked = sorted(expected.items(), key=lambda item: (-metric(item[1]), item[0]))
    whole = sum(metric(v) for v in expected.values())
    assert data_values(html, "usage-leaderboard", "data-project") == {
        str(pid): [str(rank), *cells(v), f"{share(metric(v), whole)}"] for rank, (pid, v) in enumerate(ranked, 1)}
    assert '<a href="?period=30d&amp;by=' + by + '&amp;group=project" data-group="project" class="active"' in html


def test_only_staff_with_the_usage_permission_see_a_projects_usage_and_its_links(client, carol, dave, alice):
    apollo = Project.objects.create_project("Apollo", owners=[alice])
    client.force_login(carol)
    usage = f'href="/admin/gateway/project/{apollo.pk}/usage/"'
    assert usage in client.get(f"/admin/gateway/project/{apollo.pk}/change/").content.decode()
    assert usage in client.get("/admin/gateway/project/").content.decode()
    client.force_login(dave)
    assert client.get(f"/admin/gateway/project/{apollo.pk}/usage/").status_code == 403
    usage = f"/admin/gateway/project/{apollo.pk}/usage/"
    assert usage not in client.get(f"/admin/gateway/project/{apollo.pk}/change/").content.decode()
    assert usage not in client.get("/admin/gateway/project/").content.decode()
    client.force_login(User.objects.create_user("erin", "erin@example.com"))  # not staff
    assert client.get(f"/admin/gateway/project/{apollo.pk}/usage/").status_code == 302


def test_a_missing_project_is_a_404(client, carol):
    client.force_login(carol)
    assert client.get("/admin/gateway/project/999999/usage/").status_code == 404
