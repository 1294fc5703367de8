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

from gateway.models import ApiKey
from usage import api, queries
from usage.ledger import UsageDelta, record_many


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


def expected_counters(totals):
    return {**{name: getattr(totals, name) for name in api.COUNTER_FIELDS},
            "spend_usd": format(totals.spend_usd, "f")}


@pytest.mark.parametrize("period", ["7d", "30d", "90d"])
def test_summary_equals_the_read_module_network_wide_and_per_user(history, staff, alice, period):
    data = as_user(staff).get(f"/api/usage/summary/?period={period}").json()
    resolved = queries.resolve_period(period)
    assert {k: data[k] for k in expected_counters(queries.Totals())} == expected_counters(
        queries.summary(resolved).totals)
    assert data["period"] == period and data["start"].endswith("+00:00") and data["complete_through"] is None
    mine = as_user(staff).get(f"/api/usage/summary/?period={period}&user={alice.pk}").json()
    assert mine["spend_usd"] == format(queries.summary(resolved, alice.pk).totals.spend_usd, "f")
    assert len(mine["spend_usd"].split(".")[1]) == 9


def test_series_is_dense_and_its_csv_matches_the_json(history, staff):
    client = as_user(staff)
    data = client.get("/api/usage/series/?period=30d").json()
    assert len(data["series"]) == 30
    expected = queries.daily_series(queries.resolve_period("30d"))
    assert [(p["date"], p["requests"], p["spend_usd"]) for p in data["series"]] == [
        (p.date.isoformat(), p.totals.requests, format(p.totals.spend_usd, "f")) for p in expected]
    response = client.get("/api/usage/series/?period=30d&format=csv")
    assert response["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [{k: str(v) for k, v in p.items()} for p in data["series"]]


def test_models_breakdown_and_csv(history, staff):
    client = as_user(staff)
    data = client.get("/api/usage/models/?period=90d").json()
    expected = queries.by_facade(queries.resolve_period("90d"))
    assert [(m["facade"], m["requests"], m["share"]) for m in data["models"]] == [
        (r.facade_name, r.totals.requests, str(r.share)) for r in expected]
    rows = list(csv.DictReader(io.StringIO(client.get("/api/usage/models/?period=90d&format=csv").content.decode())))
    assert [r["facade"] for r in rows] == [m["facade"] for m in data["models"]]
    assert list(rows[0]) == list(data["models"][0])


def test_leaderboard_pages_ranks_and_csv(history, staff, alice, bob):
    client = as_user(staff)
    data = client.get("/api/usage/leaderboard/?by=spend&period=90d").json()
    assert data["count"] == 2 and data["next"] is None
    assert [(r["rank"], r["username"], r["previous_rank"]) for r in data["results"]] == [
        (1, "alice", 1), (2, "bob", 2)]
    board = queries.leaderboard(queries.resolve_period("90d"), "spend")
    assert [r["spend_usd"] for r in data["results"]] == [format(r.totals.spend_usd, "f") for r in board]
    rows = list(csv.DictReader(io.StringIO(
        client.get("/api/usage/leaderboard/?by=requests&period=7d&format=csv").content.decode())))
    assert [r["username"] for r in rows] == ["alice", "bob"] and "previous_rank" in rows[0]


def test_key_holders_see_only_themselves(history, alice, bob):
    client = with_key(alice)
    own = client.get("/api/usage/summary/?period=90d").json()
    assert own["requests"] == queries.summary(queries.resolve_period("90d"), alice.pk).totals.requests
    assert client.get(f"/api/usage/summary/?user={alice.pk}").status_code == 200
    assert client.get(f"/api/usage/series/?user={bob.pk}").status_code == 403
    assert client.get("/api/usage/leaderboard/").status_code == 403
    me = client.get("/api/me/usage/?period=30d").json()
    assert me["summary"]["requests"] == queries.summary(queries.resolve_period("30d"), alice.pk).totals.requests
    assert len(me["series"]) == 30


def test_staff_without_the_permission_see_only_themselves(history, alice):
    plain = User.objects.create_user("pat", is_staff=True)
    client = as_user(plain)
    assert client.get("/api/usage/summary/").json()["requests"] == 0
    assert client.get(f"/api/usage/summary/?user={alice.pk}").status_code == 403
    assert client.get("/api/usage/leaderboard/").status_code == 403


def test_superusers_and_staff_keys_see_everyone(history, alice):
    root = User.objects.create_superuser("root", "r@example.com", "pw")
    total = queries.summary(queries.resolve_period("7d")).totals.requests
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
    monkeypatch.setattr(api.UsageThrottle, "rate", "2/min", raising=False)
    client = as_user(alice)
    assert [client.get("/api/usage/summary/").status_code for _ in range(3)] == [200, 200, 429]
