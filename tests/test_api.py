"""The usage API: every endpoint, period and permission case, numbers equal to the read module's;
CSV equal to the JSON."""

import csv
import io
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from gateway.models import ApiKey
from usage.web import api, serializers
from usage.reads import queries
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many


@pytest.fixture
def history(alice, bob, gpt, claude):
    now = timezone.now()
    deltas = []
    for days_ago in range(0, 100, 3):
        for user, facade, n in ((alice, gpt, 3), (bob, claude, 1), (alice, claude, 2)):
            deltas.append(UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk,
                                     at=now - timedelta(days=days_ago, minutes=n), input_tokens=100 * n + days_ago,
                                     cached_input_tokens=10 * n, output_tokens=7 * n, cost_nanos=123_456_789 * n))
    record_many(deltas)
    return deltas


@pytest.fixture
def staff(db):
    user = User.objects.create_user("sam", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usage_dashboard"))
    return user


def as_user(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def with_key(user):
    _, key = ApiKey.objects.create_key(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def csv_row(row: dict) -> dict:
    """A JSON row as csv.DictReader reads it back: every value a string, null empty."""
    return {k: "" if v is None else str(v) for k, v in row.items()}


def expected_counters(totals):
    return {**{name: getattr(totals, name) for name in serializers.COUNTER_FIELDS},
            "spend_usd": format(totals.spend_usd, "f")}


@pytest.mark.parametrize("period", ["7d", "30d", "90d"])
def test_summary_equals_the_read_module_network_wide_and_per_user(history, staff, alice, period):
    data = as_user(staff).get(f"/api/usage/summary/?period={period}").json()
    resolved = queries.resolve_window(period)
    assert {k: data[k] for k in expected_counters(queries.Totals())} == expected_counters(
        queries.summary(resolved).totals)
    assert data["period"] == period and data["start"].endswith("+00:00") and data["complete_through"] is None
    mine = as_user(staff).get(f"/api/usage/summary/?period={period}&user={alice.pk}").json()
    assert mine["spend_usd"] == format(queries.summary(resolved, alice.pk).totals.spend_usd, "f")
    assert len(mine["spend_usd"].split(".")[1]) == 9


@pytest.mark.parametrize("period, days", [("7d", 7), ("30d", 30), ("90d", 90)])
def test_series_is_dense_and_its_csv_matches_the_json(history, staff, alice, period, days):
    client = as_user(staff)
    for user_id, suffix in ((None, ""), (alice.pk, f"&user={alice.pk}")):
        data = client.get(f"/api/usage/series/?period={period}{suffix}").json()
        assert len(data["series"]) == days
        expected = queries.daily_series(queries.resolve_window(period), user_id)
        assert data["series"] == [{"date": p.date.isoformat(), **expected_counters(p.totals)} for p in expected]
        response = client.get(f"/api/usage/series/?period={period}{suffix}&format=csv")
        assert response["content-type"].startswith("text/csv")
        assert response["content-disposition"] == f'attachment; filename="codevector-series-{period}.csv"'
        rows = list(csv.DictReader(io.StringIO(response.content.decode())))
        assert rows == [csv_row(p) for p in data["series"]]


@pytest.mark.parametrize("period", ["7d", "30d", "90d"])
def test_models_breakdown_and_csv(history, staff, bob, period):
    client = as_user(staff)
    for user_id, suffix in ((None, ""), (bob.pk, f"&user={bob.pk}")):
        data = client.get(f"/api/usage/models/?period={period}{suffix}").json()
        expected = queries.by_facade(queries.resolve_window(period), user_id)
        assert data["models"] == [{"facade": r.facade_name, **expected_counters(r.totals), "share": str(r.share)}
                                  for r in expected]
        text = client.get(f"/api/usage/models/?period={period}{suffix}&format=csv").content.decode()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows == [csv_row(m) for m in data["models"]]


def test_extended_cache_writes_and_searches_are_counted_in_the_json_and_the_csv(staff, alice, gpt, claude):
    now = timezone.now()
    record_many([
        UsageDelta(id="x1", user_id=alice.pk, facade_id=claude.pk, at=now - timedelta(minutes=2), requests=2,
                   input_tokens=9_000, cached_input_tokens=1_000, cache_write_tokens=4_000,
                   cache_write_extended_tokens=1_500, output_tokens=700, web_search_calls=3, cost_nanos=71_000_000),
        UsageDelta(id="x2", user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(minutes=1), requests=1,
                   input_tokens=500, cache_write_tokens=200, cache_write_extended_tokens=200, output_tokens=50,
                   web_search_calls=1, file_search_calls=4, cost_nanos=20_000_000),
    ])
    new = ("cache_write_extended_tokens", "web_search_calls", "file_search_calls")
    summary = as_user(staff).get("/api/usage/summary/?period=7d").json()
    assert {k: summary[k] for k in new} == {"cache_write_extended_tokens": 1_700,  # 1,500 + 200
                                            "web_search_calls": 4, "file_search_calls": 4}  # 3 + 1; 0 + 4
    assert summary["spend_usd"] == "0.091000000"  # 71,000,000 + 20,000,000 nanodollars
    models = as_user(staff).get("/api/usage/models/?period=7d").json()["models"]
    assert [(m["facade"], m["cache_write_tokens"], m["cache_write_extended_tokens"], m["web_search_calls"],
             m["file_search_calls"], m["spend_usd"]) for m in models] == [
        ("claude-test", 4_000, 1_500, 3, 0, "0.071000000"), ("gpt-test", 200, 200, 1, 4, "0.020000000")]
    rows = list(csv.DictReader(io.StringIO(as_user(staff).get("/api/usage/models/?period=7d&format=csv")
                                           .content.decode())))
    assert [(r["facade"], r["cache_write_extended_tokens"], r["web_search_calls"], r["file_search_calls"])
            for r in rows] == [("claude-test", "1500", "3", "0"), ("gpt-test", "200", "1", "4")]
    series = as_user(staff).get("/api/usage/series/?period=7d&format=csv").content.decode()
    header = series.splitlines()[0].split(",")
    assert header[header.index("cache_write_tokens"):header.index("error_requests")] == [
        "cache_write_tokens", "cache_write_extended_tokens", "output_tokens", "reasoning_tokens", "web_search_calls",
        "file_search_calls"]
    assert sum(int(r["web_search_calls"]) for r in csv.DictReader(io.StringIO(series))) == 4


def test_the_schema_declares_the_new_counters_on_every_usage_row(staff):
    schema = as_user(staff).get("/api/schema/?format=json").json()["components"]["schemas"]
    for row in ("SummaryOut", "DayOut", "ModelRowOut", "KeyRowOut"):
        properties = schema[row]["properties"]
        for name in ("cache_write_extended_tokens", "web_search_calls", "file_search_calls"):
            assert properties[name]["type"] == "integer", (row, name)
            assert name in schema[row]["required"]


def test_an_empty_csv_still_has_its_header_row(staff):
    text = as_user(staff).get("/api/usage/models/?period=7d&format=csv").content.decode()
    assert text == ",".join(api.ModelsView.csv_fields) + "\n"
    text = as_user(staff).get("/api/usage/leaderboard/?format=csv").content.decode()
    assert text == ",".join(api.LeaderboardView.csv_fields) + "\n"


def test_csv_names_that_spreadsheets_would_run_as_formulas_are_defused(staff, gpt):
    sneaky = User.objects.create_user("-2+3")
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=sneaky.pk, facade_id=gpt.pk, at=timezone.now(),
                            input_tokens=5, output_tokens=1, cost_nanos=9)])
    rows = list(csv.DictReader(io.StringIO(as_user(staff).get("/api/usage/leaderboard/?format=csv").content.decode())))
    assert [r["username"] for r in rows] == ["'-2+3"]


def test_a_csv_request_with_bad_parameters_gets_a_400_that_says_why(staff):
    response = as_user(staff).get("/api/usage/series/?period=1y&format=csv")
    assert response.status_code == 400
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["field"] for r in rows] == ["period"] and "1y" in rows[0]["message"]


@pytest.mark.parametrize("period", ["7d", "30d", "90d"])
@pytest.mark.parametrize("by", ["tokens", "spend", "requests"])
def test_leaderboard_equals_the_read_module(history, staff, period, by):
    data = as_user(staff).get(f"/api/usage/leaderboard/?by={by}&period={period}").json()
    board = queries.leaderboard(queries.resolve_window(period), by)
    assert data["count"] == 2 and data["next"] is None and data["previous"] is None
    assert data["results"] == [
        {"rank": r.rank, "previous_rank": r.previous_rank, "user_id": r.user_id, "username": r.username,
         "requests": r.totals.requests, "input_tokens": r.totals.input_tokens, "output_tokens": r.totals.output_tokens,
         "tokens": r.totals.tokens, "spend_usd": format(r.totals.spend_usd, "f"), "share": str(r.share)}
        for r in board]


def test_leaderboard_pages_ranks_and_csv(history, staff, alice, bob):
    client = as_user(staff)
    data = client.get("/api/usage/leaderboard/?by=spend&period=90d").json()
    assert data["count"] == 2 and data["next"] is None
    assert [(r["rank"], r["username"], r["previous_rank"]) for r in data["results"]] == [
        (1, "alice", 1), (2, "bob", 2)]
    board = queries.leaderboard(queries.resolve_window("90d"), "spend")
    assert [r["spend_usd"] for r in data["results"]] == [format(r.totals.spend_usd, "f") for r in board]
    rows = list(csv.DictReader(io.StringIO(
        client.get("/api/usage/leaderboard/?by=requests&period=7d&format=csv").content.decode())))
    assert [r["username"] for r in rows] == ["alice", "bob"] and "previous_rank" in rows[0]


def test_leaderboard_pages_by_100_and_its_csv_is_the_whole_board(staff, gpt):
    users = [User.objects.create_user(f"user{i:03}") for i in range(105)]
    now = timezone.now()
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=u.pk, facade_id=gpt.pk, at=now - timedelta(minutes=1),
                            input_tokens=1000 - i, output_tokens=1, cost_nanos=1_000 * (1000 - i))
                 for i, u in enumerate(users)])
    client = as_user(staff)
    first = client.get("/api/usage/leaderboard/?period=7d").json()
    assert first["count"] == 105 and len(first["results"]) == 100 and first["previous"] is None
    assert [r["username"] for r in first["results"][:2]] == ["user000", "user001"]
    second = client.get(first["next"]).json()
    assert [r["rank"] for r in second["results"]] == [101, 102, 103, 104, 105] and second["next"] is None
    rows = list(csv.DictReader(io.StringIO(client.get("/api/usage/leaderboard/?period=7d&format=csv").content.decode())))
    assert rows == [csv_row(r) for r in first["results"] + second["results"]]
    assert client.get("/api/usage/leaderboard/?page=3").status_code == 404


def test_key_holders_see_only_themselves(history, alice, bob):
    client = with_key(alice)
    own = client.get("/api/usage/summary/?period=90d").json()
    assert own["requests"] == queries.summary(queries.resolve_window("90d"), alice.pk).totals.requests
    assert client.get(f"/api/usage/summary/?user={alice.pk}").status_code == 200
    assert client.get(f"/api/usage/series/?user={bob.pk}").status_code == 403
    assert client.get("/api/usage/models/?user=999999").status_code == 403  # unknown ids look the same
    assert client.get("/api/usage/summary/?user=abc").status_code == 400
    assert client.get("/api/usage/leaderboard/").status_code == 403
    for period, days in (("7d", 7), ("30d", 30), ("90d", 90)):
        me = client.get(f"/api/me/usage/?period={period}&user={bob.pk}").json()  # `user` is ignored here
        resolved = queries.resolve_window(period)
        assert {k: me["summary"][k] for k in expected_counters(queries.Totals())} == expected_counters(
            queries.summary(resolved, alice.pk).totals)
        assert me["series"] == [{"date": p.date.isoformat(), **expected_counters(p.totals)}
                                for p in queries.daily_series(resolved, alice.pk)]
        assert len(me["series"]) == days
    assert client.get("/api/me/usage/?period=1y").status_code == 400


def test_staff_without_the_permission_see_only_themselves(history, alice):
    plain = User.objects.create_user("pat", is_staff=True)
    client = as_user(plain)
    assert client.get("/api/usage/summary/").json()["requests"] == 0
    assert client.get(f"/api/usage/summary/?user={alice.pk}").status_code == 403
    assert client.get("/api/usage/leaderboard/").status_code == 403


def test_superusers_and_staff_keys_see_everyone(history, alice):
    root = User.objects.create_superuser("root", "r@example.com", "pw")
    total = queries.summary(queries.resolve_window("7d")).totals.requests
    assert with_key(root).get("/api/usage/summary/").json()["requests"] == total
    assert with_key(root).get(f"/api/usage/summary/?user={alice.pk}").status_code == 200


@pytest.mark.parametrize("query, field", [
    ("/api/usage/summary/?period=1y", "period"),
    ("/api/usage/series/?user=abc", "user"),
    ("/api/usage/models/?user=999999", "user"),
    ("/api/usage/leaderboard/?by=vibes", "by"),
])
def test_bad_parameters_get_drf_400s(staff, query, field):
    response = as_user(staff).get(query)
    assert response.status_code == 400 and field in response.json()


def test_anonymous_and_revoked_keys_are_refused(alice):
    assert APIClient().get("/api/usage/summary/").status_code in (401, 403)
    key_obj, key = ApiKey.objects.create_key(alice)
    key_obj.revoked_at = timezone.now()
    key_obj.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/usage/summary/").status_code == 401


def test_requests_are_throttled_per_user(alice, monkeypatch):
    from django.core.cache import cache

    cache.clear()
    monkeypatch.setitem(ScopedRateThrottle.THROTTLE_RATES, "usage", "2/min")
    client = as_user(alice)
    assert [client.get("/api/usage/summary/").status_code for _ in range(3)] == [200, 200, 429]
