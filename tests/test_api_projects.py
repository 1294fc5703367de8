"""Projects in the usage API (usage.web.api): /api/usage/projects/ for staff with the usage permission,
/api/projects/<public id>/usage/ for the project's owners (by their own API key) and that staff,
and the leaderboard by project. Every permission case, exact numbers written out by hand.

Search (alice owner, bob member) holds a key of each; Billing (carol owner) holds carol's; alice's
second key is in the Default project. Usage: days in the window rolled into hour and day rows, a
late delta added to a rolled day, today's 5-minute rows, and a delta 40 days ago (90d only).
Breaks these tests catch (each tried once): ownership taken as membership; the staff flag taken for
the usage permission; a project's page reading the caller's own usage; /api/usage/projects/ empty."""

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.models import DEFAULT_PROJECT_PUBLIC_ID, ApiKey, Project
from usage.web import api, serializers
from usage import rollups
from usage.calendar import local_date, local_midnight, zone
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many

# (key, facade, days ago, hour, minute, requests, input, output, cost in nanodollars)
ROLLED = [
    ("search_alice", "gpt", 2, 10, 0, 2, 1_000, 100, 1_000_000),  # e1
    ("search_bob", "claude", 3, 15, 0, 1, 2_000, 200, 3_000_000),  # e2
    ("billing_carol", "gpt", 1, 9, 0, 1, 500, 50, 500_000),  # e3
    ("default_alice", "gpt", 1, 11, 0, 4, 4_000, 400, 4_000_000),  # e4
    ("search_bob", "gpt", 40, 12, 0, 1, 7_000, 700, 7_000_000),  # e5: in 90d only
]
LATE = [("search_alice", "claude", 2, 10, 30, 1, 300, 30, 300_000)]  # e6: into a rolled day
TODAY = [("search_bob", "gpt", 0, 0, 1, 1, 10, 1, 10_000)]  # e7: a 5-minute row (at now if sooner)


@pytest.fixture
def world(settings, gpt, claude):
    settings.TIME_ZONE = "Europe/Paris"
    alice, bob, carol = (User.objects.create_user(name) for name in ("alice", "bob", "carol"))  # no password hashing
    search = Project.objects.create_project("Search", owners=[alice], members=[bob])
    billing = Project.objects.create_project("Billing", owners=[carol])
    keys, raw = {}, {}
    for name, user, project in (("search_alice", alice, search), ("search_bob", bob, search),
                                ("billing_carol", carol, billing), ("default_alice", alice, None)):
        keys[name], raw[name] = ApiKey.objects.create_key(user, name=name, project=project)
    facades = {"gpt": gpt, "claude": claude}
    now = timezone.now()
    today = local_midnight(local_date(now, zone()), zone())

    def deltas(rows, tag):
        return [UsageDelta(id=f"{tag}-{i}", user_id=keys[k].user_id, key_id=keys[k].pk, facade_id=facades[f].pk,
                           at=min(now, today - timedelta(days=days) + timedelta(hours=hour, minutes=minute)),
                           requests=requests, input_tokens=inp, output_tokens=out, cost_nanos=cost)
                for i, (k, f, days, hour, minute, requests, inp, out, cost) in enumerate(rows)]

    record_many(deltas(ROLLED, "rolled"))
    rollups.roll_up()
    record_many(deltas(LATE, "late") + deltas(TODAY, "today"))
    return {"search": search, "billing": billing, "alice": alice, "bob": bob, "carol": carol, "keys": keys, "raw": raw,
            "today": today}


def by_key(raw_key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def key_of(user):
    return by_key(ApiKey.objects.create_key(user, name="api")[1])  # in the Default project


def by_session(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def staff(name, allowed):
    user = User.objects.create_user(name, is_staff=True)
    if allowed:
        user.user_permissions.add(Permission.objects.get(codename="view_usage_dashboard"))
    return user


def numbers(row):
    return (row["requests"], row["input_tokens"], row["output_tokens"], row["spend_usd"])


# --- /api/usage/projects/ --------------------------------------------------------------------------


def test_staff_read_every_projects_totals_by_spend(world):
    """Search: e1 + e2 + e6 + e7 (4,310,000 nanodollars); Default: e4; Billing: e3. Shares of 8,810,000.
    Catches: by_project's rows attributed by user instead of project (alice's Default key in Search)."""
    data = by_session(staff("sam", allowed=True)).get("/api/usage/projects/?period=7d").json()
    assert data["period"] == "7d"
    assert [(r["project_id"], r["name"], *numbers(r), r["share"]) for r in data["projects"]] == [
        (world["search"].public_id, "Search", 5, 3_310, 331, "0.004310000", "0.4892"),
        (DEFAULT_PROJECT_PUBLIC_ID, "Default project", 4, 4_000, 400, "0.004000000", "0.4540"),
        (world["billing"].public_id, "Billing", 1, 500, 50, "0.000500000", "0.0568"),
    ]
    ninety = by_session(staff("sue", allowed=True)).get("/api/usage/projects/?period=90d").json()["projects"]
    assert numbers(ninety[0]) == (6, 10_310, 1_031, "0.011310000")  # + e5


def test_the_projects_csv_is_the_json(world):
    client = by_session(staff("sam", allowed=True))
    rows = list(csv.DictReader(io.StringIO(client.get("/api/usage/projects/?format=csv").content.decode())))
    data = client.get("/api/usage/projects/").json()["projects"]
    assert rows == [{k: str(v) for k, v in row.items()} for row in data] and len(rows) == 3
    assert client.get("/api/usage/projects/?format=csv")["content-disposition"] == (
        'attachment; filename="codevector-projects-7d.csv"')


@pytest.mark.parametrize("who", ["owner", "member", "staff without the permission"])
def test_only_staff_with_the_permission_read_every_project(world, who):
    client = {"owner": lambda: by_key(world["raw"]["search_alice"]), "member": lambda: key_of(world["bob"]),
              "staff without the permission": lambda: key_of(staff("pat", allowed=False))}[who]()
    response = client.get("/api/usage/projects/")
    assert response.status_code == 403 and "usage.view_usage_dashboard" in response.json()["detail"]


# --- /api/projects/<public id>/usage/ -------------------------------------------------------------


def test_an_owner_reads_their_projects_usage_with_their_own_key(world):
    """Every member's keys in Search, none of alice's Default key (e4). Catches: the project's usage
    read as the caller's own (alice alone) or everyone's."""
    search = world["search"]
    data = by_key(world["raw"]["default_alice"]).get(f"/api/projects/{search.public_id}/usage/?period=7d").json()
    assert data["project"] == {"project_id": search.public_id, "name": "Search", "description": "", "active": True}
    assert numbers(data["summary"]) == (5, 3_310, 331, "0.004310000") and data["summary"]["period"] == "7d"
    assert [(m["facade"], *numbers(m), m["share"]) for m in data["models"]] == [
        ("claude-test", 2, 2_300, 230, "0.003300000", "0.7657"),  # e2 + e6
        ("gpt-test", 3, 1_010, 101, "0.001010000", "0.2343"),  # e1 + e7
    ]
    keys = world["keys"]
    assert [(k["api_key"], k["username"], *numbers(k)) for k in data["keys"]] == [
        (keys["search_bob"].prefix, "bob", 2, 2_010, 201, "0.003010000"),  # e2 + e7
        (keys["search_alice"].prefix, "alice", 3, 1_300, 130, "0.001300000"),  # e1 + e6
    ]
    series = {p["date"]: p["spend_usd"] for p in data["series"] if p["requests"]}
    day = lambda ago: local_date(world["today"] - timedelta(days=ago) + timedelta(hours=12), zone()).isoformat()
    assert len(data["series"]) == 7
    assert series == {day(3): "0.003000000", day(2): "0.001300000", day(0): "0.000010000"}
    ninety = by_key(world["raw"]["search_alice"]).get(f"/api/projects/{search.public_id}/usage/?period=90d").json()
    assert numbers(ninety["summary"]) == (6, 10_310, 1_031, "0.011310000") and len(ninety["series"]) == 90


def test_staff_with_the_permission_read_any_project_by_session_or_key(world):
    sam = staff("sam", allowed=True)
    for client in (by_session(sam), key_of(sam)):
        data = client.get(f"/api/projects/{world['billing'].public_id}/usage/").json()
        assert numbers(data["summary"]) == (1, 500, 50, "0.000500000")
        default = client.get(f"/api/projects/{DEFAULT_PROJECT_PUBLIC_ID}/usage/").json()
        assert numbers(default["summary"]) == (4, 4_000, 400, "0.004000000")


def test_an_inactive_projects_owner_still_reads_it(world):
    Project.objects.filter(pk=world["billing"].pk).update(is_active=False)
    data = key_of(world["carol"]).get(f"/api/projects/{world['billing'].public_id}/usage/").json()
    assert data["project"]["active"] is False and numbers(data["summary"]) == (1, 500, 50, "0.000500000")


@pytest.mark.parametrize("who, project", [
    ("member", "search"),  # bob: a member of Search, not an owner
    ("non-member", "search"),  # carol: owns Billing, not in Search
    ("owner of another project", "billing"),  # alice owns Search
    ("everyone's Default project", DEFAULT_PROJECT_PUBLIC_ID),  # alice: a member of it, as everyone, not an owner
    ("staff without the permission", "search"),
])
def test_whoever_is_not_an_owner_or_staff_with_the_permission_gets_403(world, who, project):
    """Catches: membership taken for ownership (bob, and alice in the Default project), or the staff flag
    alone taken for the permission."""
    client = {"member": lambda: key_of(world["bob"]), "non-member": lambda: key_of(world["carol"]),
              "owner of another project": lambda: by_key(world["raw"]["search_alice"]),
              "everyone's Default project": lambda: key_of(world["alice"]),
              "staff without the permission": lambda: by_session(staff("pat", allowed=False))}[who]()
    public_id = world[project].public_id if project in world else project
    response = client.get(f"/api/projects/{public_id}/usage/")
    assert response.status_code == 403
    assert response.json() == {"detail": api.ReadsProject.message}


def test_an_unknown_project_is_404_and_anonymous_callers_401(world):
    response = key_of(world["alice"]).get("/api/projects/proj_nope/usage/")
    assert response.status_code == 404 and response.json() == {"detail": "No project has the id 'proj_nope'."}
    assert APIClient().get(f"/api/projects/{world['search'].public_id}/usage/").status_code == 401
    revoked = world["keys"]["search_alice"]
    revoked.revoked_at = timezone.now()
    revoked.save()
    assert by_key(world["raw"]["search_alice"]).get(f"/api/projects/{world['search'].public_id}/usage/"
                                                    ).status_code == 401


def test_a_bad_period_is_a_400_for_an_owner(world):
    response = by_key(world["raw"]["search_alice"]).get(f"/api/projects/{world['search'].public_id}/usage/?period=1y")
    assert response.status_code == 400 and "period" in response.json()


# --- the leaderboard by project and the schema ----------------------------------------------------


def test_the_leaderboard_ranks_projects(world):
    client = by_session(staff("sam", allowed=True))
    data = client.get("/api/usage/leaderboard/?group=project&by=spend").json()
    assert [(r["rank"], r["project_id"], r["name"], r["requests"], r["spend_usd"]) for r in data["results"]] == [
        (1, world["search"].public_id, "Search", 5, "0.004310000"),
        (2, DEFAULT_PROJECT_PUBLIC_ID, "Default project", 4, "0.004000000"),
        (3, world["billing"].public_id, "Billing", 1, "0.000500000")]
    assert set(data["results"][0]) == set(serializers.ProjectLeaderRowOut().fields)
    text = client.get("/api/usage/leaderboard/?group=project&by=spend&format=csv").content.decode()
    assert text.splitlines()[0] == ",".join(serializers.ProjectLeaderRowOut().fields)
    assert len(text.splitlines()) == 4


def test_the_schema_describes_the_project_endpoints(db):
    schema = by_session(User.objects.create_user("root", is_staff=True, is_superuser=True)).get(
        "/api/schema/?format=json").json()
    assert set(schema["paths"]["/api/projects/{public_id}/usage/"]["get"]["responses"]) == {"200", "403", "404"}
    assert "/api/usage/projects/" in schema["paths"]
    components = schema["components"]["schemas"]
    assert {"project_id", "name", "spend_usd", "share"} <= set(components["ProjectRowOut"]["required"])
    assert "ProjectLeaderRowOut" in {ref["$ref"].rsplit("/", 1)[1] for ref in components["LeaderboardRow"]["oneOf"]}
