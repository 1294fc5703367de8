"""Usage per API key: the read module, the key's admin page, a user's key list, the leaderboard of keys
and the API, each compared with an oracle computed here from the deltas written (explicit key ids for
two users with one to three keys each, plus deltas without a key, which belong to the user's reserved
key), part of them rolled up."""

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.models import ApiKey
from usage.reads import queries
from usage import rollups
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.reserved import RESERVED_KEY_NAME, reserved_key_prefix

PERIODS = ["7d", "30d", "90d"]
AGES = [timedelta(minutes=1), timedelta(hours=30), timedelta(days=4), timedelta(days=12), timedelta(days=45),
        timedelta(days=100), timedelta(days=170)]


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


@dataclass
class World:
    now: object
    deltas: list
    keys: dict  # label -> ApiKey (a1, a2, b1, b2, b3; a0 / b0: the reserved keys)
    alice: User
    bob: User


@pytest.fixture
def world(alice, bob, gpt, claude):
    now = timezone.now()
    keys = {"a1": ApiKey.objects.create_key(alice, name="alice laptop")[0],
            "a2": ApiKey.objects.create_key(alice, name="alice ci")[0],
            "b1": ApiKey.objects.create_key(bob, name="bob laptop")[0],
            "b2": ApiKey.objects.create_key(bob, name="")[0],
            "b3": ApiKey.objects.create_key(bob, name="bob unused")[0]}
    deltas = []
    for n, age in enumerate(AGES):
        plan = [(alice, "a1", gpt, 1, 11), (alice, "a2", claude, 3, 13), (bob, "b1", gpt, 7 + n, 17)]
        if n in (1, 4):
            plan.append((alice, None, gpt, 2, 19))  # before per-key accounting: alice's reserved key
        if n % 2 == 0:
            plan.append((bob, "b2", claude, 5, 23))
        if n == 5:
            plan.append((bob, None, claude, 4, 29))  # bob's reserved key: only 100 days ago
        for user, key, facade, scale, salt in plan:
            deltas.append(UsageDelta(
                id=f"k{n}-{user.pk}-{key}-{facade.pk}", user_id=user.pk, facade_id=facade.pk,
                key_id=keys[key].pk if key else None, at=now - age, requests=scale, error_requests=n % 2,
                input_tokens=1000 * scale + n, cached_input_tokens=10 * n, output_tokens=300 * scale + n,
                reasoning_tokens=scale * n, cost_nanos=123_456_789 * scale + 1000 * salt + n))
    record_many(deltas)
    rollups.roll_up(now=now - timedelta(days=2))
    assert rollups.watermark() is not None
    keys["a0"] = ApiKey.objects.get(user=alice, prefix=reserved_key_prefix(alice.pk))
    keys["b0"] = ApiKey.objects.get(user=bob, prefix=reserved_key_prefix(bob.pk))
    return World(now, deltas, keys, alice, bob)


# --- the oracle: sums of the deltas written ---------------------------------------------------


FIELDS = ("requests", "input_tokens", "output_tokens", "reasoning_tokens", "cached_input_tokens",
          "cache_write_tokens", "cache_write_extended_tokens", "web_search_calls", "file_search_calls",
          "error_requests", "estimated_requests", "cost_nanos")


def key_of(world, delta) -> int:
    if delta.key_id is not None:
        return delta.key_id
    return world.keys["a0" if delta.user_id == world.alice.pk else "b0"].pk


def sums(deltas) -> dict[str, int]:
    return {f: sum(getattr(d, f) for d in deltas) for f in FIELDS}


def in_window(world, start, end, **match):
    return [d for d in world.deltas if start <= d.at < end
            and all((key_of(world, d) if k == "key_id" else getattr(d, k)) == v for k, v in match.items())]


def oracle_per_key(world, start, end, user_id=None) -> dict[int, dict[str, int]]:
    per = {}
    for d in in_window(world, start, end):
        if user_id is None or d.user_id == user_id:
            per.setdefault(key_of(world, d), []).append(d)
    return {kid: sums(ds) for kid, ds in per.items()}


def usd(nanos: int) -> str:
    return f"{Decimal(nanos).scaleb(-9):.9f}"


def share(part: int, whole: int) -> str:
    return str((Decimal(part) / whole).quantize(Decimal("0.0001")))


def key_info(kid):
    key = ApiKey.objects.select_related("user").get(pk=kid)
    return key.prefix, key.name, key.user_id, key.user.username


def oracle_key_rows(world, window, user_id=None) -> list[dict]:
    """The /api/usage/keys/ rows: by spend, then prefix."""
    per = oracle_per_key(world, window.start, window.end, user_id)
    whole = sum(t["cost_nanos"] for t in per.values())
    rows = []
    for kid, t in per.items():
        prefix, name, uid, username = key_info(kid)
        rows.append({"key_id": kid, "api_key": prefix, "name": name, "user_id": uid, "username": username,
                     **{f: t[f] for f in FIELDS if f != "cost_nanos"}, "spend_usd": usd(t["cost_nanos"]),
                     "share": share(t["cost_nanos"], whole)})
    return sorted(rows, key=lambda r: (-Decimal(r["spend_usd"]), r["api_key"]))


def metric(t, by):
    return {"tokens": t["input_tokens"] + t["output_tokens"], "spend": t["cost_nanos"], "requests": t["requests"]}[by]


def oracle_key_board(world, window, by) -> list[dict]:
    now_per = oracle_per_key(world, window.start, window.end)
    before = oracle_per_key(world, window.previous_start, window.previous_end)
    ranked = sorted(now_per, key=lambda kid: (-metric(now_per[kid], by), kid))
    previous = {kid: i for i, kid in enumerate(sorted(before, key=lambda kid: (-metric(before[kid], by), kid)), 1)}
    whole = sum(metric(t, by) for t in now_per.values())
    rows = []
    for rank, kid in enumerate(ranked, 1):
        t = now_per[kid]
        prefix, name, uid, username = key_info(kid)
        rows.append({"rank": rank, "previous_rank": previous.get(kid), "key_id": kid, "api_key": prefix,
                     "name": name, "user_id": uid, "username": username, "requests": t["requests"],
                     "input_tokens": t["input_tokens"], "output_tokens": t["output_tokens"],
                     "tokens": t["input_tokens"] + t["output_tokens"], "spend_usd": usd(t["cost_nanos"]),
                     "share": share(metric(t, by), whole)})
    return rows


# --- helpers for pages and clients -------------------------------------------------------------


def kpis(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-kpi="(\w+)">.*?data-value="([^"]*)"', html, re.S))


def table_rows(html: str, table_id: str, key: str) -> dict[str, list[str]]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(rf'<tr {key}="(\d+)">(.*?)</tr>', table, re.S)
    return {ident: re.findall(r'data-value="([^"]*)"', body) for ident, body in rows}


def chart_island(html: str) -> dict:
    return json.loads(re.search(r'<script id="usage-chart-data" type="application/json">(.*?)</script>', html,
                                re.S).group(1))


def as_user(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def with_key(user):
    _, raw = ApiKey.objects.create_key(user, name="api reader")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def csv_row(row: dict) -> dict:
    return {k: "" if v is None else str(v) for k, v in row.items()}


# --- the read module ---------------------------------------------------------------------------


@pytest.mark.parametrize("period", PERIODS)
def test_by_key_equals_the_sum_of_the_deltas(world, period):
    window = queries.resolve_window(period)
    for user_id in (None, world.alice.pk, world.bob.pk):
        got = [{"key_id": r.key_id, "api_key": r.prefix, "name": r.name, "user_id": r.user_id,
                "username": r.username, **{f: getattr(r.totals, f) for f in FIELDS if f != "cost_nanos"},
                "spend_usd": f"{r.totals.spend_usd:f}", "share": str(r.share)}
               for r in queries.by_key(window, user_id)]
        assert got == oracle_key_rows(world, window, user_id)
        assert got  # every period has usage
    rows = queries.by_key(window)
    reserved = {r.key_id: r for r in rows if r.reserved}
    assert set(reserved) <= {world.keys["a0"].pk, world.keys["b0"].pk}
    assert all(r.label == RESERVED_KEY_NAME and r.name == RESERVED_KEY_NAME for r in reserved.values())
    assert world.keys["b3"].pk not in {r.key_id for r in rows}  # unused: no row


def test_the_reserved_key_holds_usage_without_a_key(world):
    window = queries.resolve_window("7d")
    rows = {r.key_id: r for r in queries.by_key(window, world.alice.pk)}
    assert rows[world.keys["a0"].pk].reserved and rows[world.keys["a0"].pk].totals.requests == 2
    assert world.keys["a0"].revoked_at is not None and not world.keys["a0"].is_usable()
    # The keys of a user add up to the user: nothing is lost or counted twice.
    for period in PERIODS:
        w = queries.resolve_window(period)
        for user in (world.alice, world.bob):
            total = sum((r.totals for r in queries.by_key(w, user.pk)), queries.Totals())
            assert total == queries.summary(w, user.pk).totals


@pytest.mark.parametrize("period", PERIODS)
def test_per_key_summary_series_and_models(world, period):
    window = queries.resolve_window(period)
    for label, key in world.keys.items():
        expected = sums(in_window(world, window.start, window.end, key_id=key.pk))
        summary = queries.summary(window, key_id=key.pk)
        assert {f: getattr(summary.totals, f) for f in FIELDS} == expected, label
        assert {f: getattr(summary.previous, f) for f in FIELDS} == sums(
            in_window(world, window.previous_start, window.previous_end, key_id=key.pk)), label
        series = queries.daily_series(window, key_id=key.pk)
        assert len(series) == window.days
        assert {f: sum(getattr(p.totals, f) for p in series) for f in FIELDS} == expected
        per_facade = {r.facade_id: {f: getattr(r.totals, f) for f in FIELDS}
                      for r in queries.by_facade(window, key_id=key.pk)}
        facades = {d.facade_id for d in in_window(world, window.start, window.end, key_id=key.pk)}
        assert per_facade == {fid: sums(in_window(world, window.start, window.end, key_id=key.pk, facade_id=fid))
                              for fid in facades}
    # The parameter is a filter like user_id: together they still narrow.
    assert queries.summary(window, user_id=world.bob.pk, key_id=world.keys["a1"].pk).totals == queries.Totals()


@pytest.mark.parametrize("by", ["tokens", "spend", "requests"])
@pytest.mark.parametrize("period", PERIODS)
def test_the_leaderboard_of_keys_equals_the_oracle(world, period, by):
    window = queries.resolve_window(period)
    expected = oracle_key_board(world, window, by)
    board = queries.leaderboard(window, by, group="key")
    assert [(r.rank, r.previous_rank, r.key_id, r.prefix, r.user_id, r.username, r.totals.tokens,
             f"{r.totals.spend_usd:f}", str(r.share)) for r in board] == [
        (e["rank"], e["previous_rank"], e["key_id"], e["api_key"], e["user_id"], e["username"], e["tokens"],
         e["spend_usd"], e["share"]) for e in expected]
    assert queries.leaderboard_count(window, group="key") == len(expected)
    assert [r.key_id for r in queries.leaderboard(window, by, limit=2, offset=1, group="key")] == [
        e["key_id"] for e in expected[1:3]]
    assert queries.leaderboard_count(window) == queries.leaderboard_count(window, group="user") == 2
    with pytest.raises(ValueError):
        queries.leaderboard(window, by, group="team")


# --- the admin pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("period", PERIODS)
def test_a_keys_page_shows_its_numbers(client, carol, world, period):
    client.force_login(carol)
    window = queries.resolve_window(period)
    for label in ("a1", "a2", "b1", "b2", "a0"):
        key = world.keys[label]
        html = client.get(f"/admin/gateway/apikey/{key.pk}/usage/?period={period}").content.decode()
        t = sums(in_window(world, window.start, window.end, key_id=key.pk))
        assert kpis(html) == {"spend": usd(t["cost_nanos"]), "requests": str(t["requests"]),
                              "input_tokens": str(t["input_tokens"]), "output_tokens": str(t["output_tokens"])}
        facades = {d.facade_id for d in in_window(world, window.start, window.end, key_id=key.pk)}
        expected = {}
        for fid in facades:
            f = sums(in_window(world, window.start, window.end, key_id=key.pk, facade_id=fid))
            expected[str(fid)] = [str(f["requests"]), str(f["input_tokens"]), str(f["output_tokens"]),
                                  str(f["reasoning_tokens"]), usd(f["cost_nanos"]), share(f["cost_nanos"], t["cost_nanos"])]
        assert table_rows(html, "usage-by-model", "data-facade") == expected
        chart = chart_island(html)
        assert len(chart["labels"]) == window.days and sum(chart["input"]) == t["input_tokens"]
        assert sum(chart["output"]) == t["output_tokens"]
        assert 'data-period="7d"' in html and 'id="activity-trend"' in html and 'id="token-consumption"' in html
        assert f'href="/admin/auth/user/{key.user_id}/usage/?period={period}"' in html
        if label == "a0":
            assert RESERVED_KEY_NAME in html
        else:
            assert f"{key.prefix}…" in html


def test_a_keys_page_needs_the_usage_permission(client, dave, carol, world):
    key = world.keys["a1"]
    client.force_login(dave)
    assert client.get(f"/admin/gateway/apikey/{key.pk}/usage/").status_code == 403
    client.force_login(carol)
    assert client.get("/admin/gateway/apikey/999999/usage/").status_code == 404
    client.logout()
    assert client.get(f"/admin/gateway/apikey/{key.pk}/usage/").status_code == 302  # to the login page


def test_the_key_list_and_change_page_link_to_the_keys_usage(admin_client, world):
    key = world.keys["b1"]
    listing = admin_client.get("/admin/gateway/apikey/").content.decode()
    assert f'href="/admin/gateway/apikey/{key.pk}/usage/"' in listing
    change = admin_client.get(f"/admin/gateway/apikey/{key.pk}/change/").content.decode()
    assert f'href="/admin/gateway/apikey/{key.pk}/usage/"' in change


def test_staff_without_the_permission_see_no_key_usage_links(client, dave, world):
    dave.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(dave)
    key = world.keys["b1"]
    assert f"/admin/gateway/apikey/{key.pk}/usage/" not in client.get("/admin/gateway/apikey/").content.decode()
    change = client.get(f"/admin/gateway/apikey/{key.pk}/change/").content.decode()
    assert f"/admin/gateway/apikey/{key.pk}/usage/" not in change


@pytest.mark.parametrize("period", PERIODS)
def test_a_users_page_lists_their_keys_with_their_usage(client, carol, world, period):
    client.force_login(carol)
    window = queries.resolve_window(period)
    for user, own, reserved in ((world.alice, ("a1", "a2"), "a0"), (world.bob, ("b1", "b2", "b3"), "b0")):
        html = client.get(f"/admin/auth/user/{user.pk}/usage/?period={period}").content.decode()
        per = oracle_per_key(world, window.start, window.end, user.pk)
        expected = {}
        for label in own + ((reserved,) if world.keys[reserved].pk in per else ()):
            t = per.get(world.keys[label].pk, dict.fromkeys(FIELDS, 0))
            expected[str(world.keys[label].pk)] = [str(t["requests"]), str(t["input_tokens"]),
                                                   str(t["output_tokens"]), usd(t["cost_nanos"])]
        assert table_rows(html, "usage-keys", "data-key") == expected
        for ident in expected:
            assert f'href="/admin/gateway/apikey/{ident}/usage/?period={period}"' in html
        assert (RESERVED_KEY_NAME in html) == (world.keys[reserved].pk in per)
    # alice's usage without a key is in every period; bob's only 100 days ago, so in none.
    assert world.keys["a0"].pk in oracle_per_key(world, window.start, window.end, world.alice.pk)
    assert world.keys["b0"].pk not in oracle_per_key(world, window.start, window.end, world.bob.pk)


@pytest.mark.parametrize("by", ["tokens", "spend"])
@pytest.mark.parametrize("period", PERIODS)
def test_the_leaderboard_page_ranks_keys(client, carol, world, period, by):
    client.force_login(carol)
    html = client.get(f"/admin/usage/leaderboard/?period={period}&by={by}&group=key").content.decode()
    expected = oracle_key_board(world, queries.resolve_window(period), by)
    assert table_rows(html, "usage-leaderboard", "data-key") == {
        str(e["key_id"]): [str(e["rank"]), str(e["requests"]), str(e["input_tokens"]), str(e["output_tokens"]),
                           e["spend_usd"], e["share"]] for e in expected}
    for e in expected:
        assert f'href="/admin/gateway/apikey/{e["key_id"]}/usage/?period={period}"' in html
        assert f'href="/admin/auth/user/{e["user_id"]}/usage/?period={period}">{e["username"]}</a>' in html
    assert f"group=key&amp;format=csv" in html
    # The tabs: users and API keys, keeping the period and the ordering.
    assert f'href="?period={period}&amp;by={by}&amp;group=user" data-group="user"' in html
    assert re.search(r'data-group="key" class="active"', html)
    users = client.get(f"/admin/usage/leaderboard/?period={period}&by={by}").content.decode()
    assert 'data-user="' in users and 'data-key="' not in users
    assert re.search(r'data-group="user" class="active"', users)


# --- the API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("period", PERIODS)
def test_the_keys_endpoint_for_staff(world, carol, period):
    client = as_user(carol)
    window = queries.resolve_window(period)
    data = client.get(f"/api/usage/keys/?period={period}").json()
    assert data["period"] == period and data["keys"] == oracle_key_rows(world, window)
    mine = client.get(f"/api/usage/keys/?period={period}&user={world.bob.pk}").json()
    assert mine["keys"] == oracle_key_rows(world, window, world.bob.pk)
    assert {r["user_id"] for r in mine["keys"]} == {world.bob.pk}
    response = client.get(f"/api/usage/keys/?period={period}&format=csv")
    assert response["content-type"].startswith("text/csv")
    assert response["content-disposition"] == f'attachment; filename="codevector-keys-{period}.csv"'
    assert csv_rows(response) == [csv_row(r) for r in data["keys"]]


def test_the_keys_endpoint_refuses_others_and_unknown_users(world, carol, alice):
    assert with_key(alice).get("/api/usage/keys/").status_code == 403
    assert with_key(alice).get(f"/api/usage/keys/?user={alice.pk}").status_code == 403
    response = as_user(carol).get("/api/usage/keys/?user=999999")
    assert response.status_code == 400 and "user" in response.json()
    assert as_user(carol).get("/api/usage/keys/?period=1y").status_code == 400
    assert APIClient().get("/api/usage/keys/").status_code in (401, 403)
    text = as_user(carol).get("/api/usage/keys/?user=999999&format=csv").content.decode()
    assert text.startswith("field,message\nuser,")


@pytest.mark.parametrize("period", PERIODS)
def test_my_usage_lists_only_my_keys(world, period):
    client = with_key(world.alice)  # a new key, unused: not listed
    window = queries.resolve_window(period)
    data = client.get(f"/api/me/usage/?period={period}&user={world.bob.pk}").json()
    assert data["keys"] == oracle_key_rows(world, window, world.alice.pk)
    assert {r["user_id"] for r in data["keys"]} == {world.alice.pk}
    assert world.keys["a0"].pk in {r["key_id"] for r in data["keys"]}
    assert data["summary"]["requests"] == sum(r["requests"] for r in data["keys"])


@pytest.mark.parametrize("by", ["tokens", "spend", "requests"])
@pytest.mark.parametrize("period", PERIODS)
def test_the_leaderboard_api_ranks_keys(world, carol, period, by):
    client = as_user(carol)
    expected = oracle_key_board(world, queries.resolve_window(period), by)
    data = client.get(f"/api/usage/leaderboard/?period={period}&by={by}&group=key").json()
    assert data["count"] == len(expected) and data["next"] is None and data["results"] == expected
    response = client.get(f"/api/usage/leaderboard/?period={period}&by={by}&group=key&format=csv")
    assert response["content-disposition"] == f'attachment; filename="codevector-leaderboard-keys-{period}.csv"'
    assert csv_rows(response) == [csv_row(r) for r in expected]
    assert list(csv_rows(response)[0]) == ["rank", "previous_rank", "key_id", "api_key", "name", "user_id",
                                           "username", "requests", "input_tokens", "output_tokens", "tokens",
                                           "spend_usd", "share"]
    users = client.get(f"/api/usage/leaderboard/?period={period}&by={by}").json()["results"]
    assert [r["username"] for r in users] and "key_id" not in users[0]
    assert client.get("/api/usage/leaderboard/?group=team").status_code == 400


def test_an_empty_key_board_csv_still_has_its_header(carol):
    text = as_user(carol).get("/api/usage/leaderboard/?group=key&format=csv").content.decode()
    assert text == "rank,previous_rank,key_id,api_key,name,user_id,username,requests,input_tokens," \
                   "output_tokens,tokens,spend_usd,share\n"
    text = as_user(carol).get("/api/usage/keys/?format=csv").content.decode()
    assert text.startswith("key_id,api_key,name,user_id,username,requests,") and text.count("\n") == 1


def test_the_schema_describes_the_keys_endpoint_and_both_leaderboard_rows(client, db):
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/usage/keys/" in schema["paths"]
    components = schema["components"]["schemas"]
    assert {"KeyRowOut", "KeysOut", "KeyLeaderRowOut", "LeaderRowOut"} <= set(components)
    assert components["LeaderboardRow"]["oneOf"]
    assert components["KeyLeaderRowOut"]["additionalProperties"] is False
    assert "keys" in components["MyUsageOut"]["properties"]
    params = {p["name"] for p in schema["paths"]["/api/usage/leaderboard/"]["get"]["parameters"]}
    assert "group" in params
