"""A project's usage (#30) is its keys' usage: usage.queries read per project, against an oracle.

Two projects (Apollo: a key of alice's and one of bob's; Gemini: a key of alice's), a key in the
Default project, and bob's keyless deltas, which land on his reserved key, in the Default project.
Every expected number is a plain Python sum over the deltas the test wrote, keyed by the project
the test put each key in; the reads mix month, day, hour and 5-minute rows, late deltas behind the
watermark included. Breaks these tests catch (each tried once): the project filter left out of
usage.sql.segment_filters (every project reads everyone's numbers); sums per project joined on
the key's user instead of its project; the leaderboard's "project" group ranking keys.
"""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User

from gateway.models import DEFAULT_PROJECT_ID, ApiKey, Project
from usage import queries, rollups, sql
from usage.ledger import UsageDelta, record_many
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
    reserved = ApiKey.objects.get(digest=sql.reserved_key_digest(bob.pk))
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
            levels = {model for model, _, _ in queries.segments(window.start, window.end, rollups.watermark())}
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
