"""Projects in the OpenAI-shaped usage and costs API (usage.web.openai_usage): `project_ids[]` and
`group_by[]=project_id`, read over real HTTP (pytest-django's live_server) by the official openai SDK.

Two projects, three keys: Search (alice owner, bob member) holds alice's and bob's keys, Billing
(carol owner, alice member) holds a second key of alice's; carol's key is in the Default project.
Usage at every level: two past local days rolled into hour and day rows, late data added to those
rolled rows afterwards, and today's 5-minute rows. The expected numbers are written out by hand
(each delta's cost below), so a project's totals are checked against arithmetic, not against a
second reading of the ledger."""

import json
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from gateway.models import DEFAULT_PROJECT_PUBLIC_ID, ApiKey, ModelFacade, Project
from usage import rollups
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.calendar import local_date, local_midnight, zone

ZONE = "Asia/Kolkata"  # +5:30: local days and hours that are not UTC's

# Per token: input 1,000 nanodollars ($1 a million), cached input 100, output 4,000; a web search
# 10,000,000 ($10 per 1,000 calls). Embeddings: 20 a token.
GPT = {"input_price_micros": 1_000_000, "cached_input_price_micros": 100_000, "output_price_micros": 4_000_000,
       "web_search_price_micros": 10_000_000}
EMBED = {"input_price_micros": 20_000}

# (name, key, facade, local day (0: two days ago, 1: yesterday, 2: today), hour, minute,
#  requests, input, cached input, output, web searches, cost in nanodollars)
ROLLED = [
    ("d1", "search_alice", "gpt", 0, 3, 10, 1, 1_000, 200, 100, 0, 1_220_000),  # 800 x 1,000 + 200 x 100 + 100 x 4,000
    ("d2", "search_bob", "gpt", 0, 10, 20, 2, 3_000, 0, 400, 0, 4_600_000),
    ("d3", "billing_alice", "gpt", 0, 22, 55, 1, 500, 0, 50, 0, 700_000),
    ("d4", "billing_alice", "embed", 0, 5, 0, 1, 800, 0, 0, 0, 16_000),  # 800 x 20
    ("d5", "default_carol", "gpt", 0, 12, 0, 1, 10_000, 0, 1_000, 0, 14_000_000),
    ("d6", "search_alice", "gpt", 1, 9, 0, 3, 2_000, 1_000, 300, 0, 2_300_000),
    ("d7", "search_bob", "embed", 1, 14, 30, 1, 5_000, 0, 0, 0, 100_000),
]
LATE = [  # recorded after the rollup: added to the rolled hour and day rows
    ("d8", "billing_alice", "gpt", 1, 8, 15, 1, 100, 0, 10, 1, 10_140_000),  # 100,000 + 40,000 + 1 search
    ("d9", "search_alice", "gpt", 0, 23, 30, 1, 400, 0, 40, 0, 560_000),
]
TODAY = [  # the current day's 5-minute rows (minutes after local midnight, or now if sooner)
    ("d10", "search_bob", "gpt", 2, 0, 0, 1, 700, 100, 70, 0, 890_000),
    ("d11", "billing_alice", "gpt", 2, 0, 1, 1, 300, 0, 30, 0, 420_000),
    ("d12", "default_carol", "gpt", 2, 0, 2, 1, 1, 0, 1, 0, 5_000),
]

# Completions per project and local day: (requests, input, cached input, output). Search: d1 + d2 + d9,
# d6, d10; Billing: d3, d8, d11 (its embeddings d4 are not completions); Default: d5, d12.
COMPLETIONS = {
    ("Search", 0): (4, 4_400, 200, 540), ("Search", 1): (3, 2_000, 1_000, 300), ("Search", 2): (1, 700, 100, 70),
    ("Billing", 0): (1, 500, 0, 50), ("Billing", 1): (1, 100, 0, 10), ("Billing", 2): (1, 300, 0, 30),
    ("Default", 0): (1, 10_000, 0, 1_000), ("Default", 2): (1, 1, 0, 1),
}
# Costs per project and local day, every facade: Search 1,220,000 + 4,600,000 + 560,000; 2,300,000 + 100,000
# (the embeddings d7); 890,000. Billing 700,000 + 16,000; 10,140,000; 420,000. Default 14,000,000; 5,000.
COSTS = {
    ("Search", 0): 6_380_000, ("Search", 1): 2_400_000, ("Search", 2): 890_000,
    ("Billing", 0): 716_000, ("Billing", 1): 10_140_000, ("Billing", 2): 420_000,
    ("Default", 0): 14_000_000, ("Default", 2): 5_000,
}


class World:
    def __init__(self, url):
        self.url = url

    def client(self, key=None):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", admin_api_key=key or self.admin_key,
                             max_retries=0, timeout=20)

    def day(self, index: int) -> int:
        return int(self.days[index].timestamp())

    def label(self, start_time: int, public_id: str) -> tuple[str, int]:
        """(project name, local day index) of a bucket's result."""
        return self.names[public_id], [self.day(i) for i in range(3)].index(start_time)

    def raw_costs(self, **params) -> dict:
        """costs() through the SDK, answering the raw JSON with amounts as Decimals (the SDK's are floats)."""
        raw = self.client().admin.organization.usage.with_raw_response.costs(**params)
        return json.loads(raw.http_response.content, parse_float=Decimal)

    def raw_get(self, path):
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.admin_key}"})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def world(live_server, settings, transactional_db):
    settings.TIME_ZONE = ZONE
    w = World(live_server.url)
    root = User.objects.create_user("root", is_staff=True, is_superuser=True)  # no password: no hashing
    alice, bob, carol = (User.objects.create_user(name) for name in ("alice", "bob", "carol"))
    search = Project.objects.create_project("Search", owners=[alice], members=[bob])
    billing = Project.objects.create_project("Billing", owners=[carol], members=[alice])
    w.search, w.billing = search.public_id, billing.public_id
    w.names = {search.public_id: "Search", billing.public_id: "Billing", DEFAULT_PROJECT_PUBLIC_ID: "Default"}
    _, w.admin_key = ApiKey.objects.create_key(root, name="admin")  # Default project; no usage
    keys = {"search_alice": ApiKey.objects.create_key(alice, name="search", project=search)[0],
            "search_bob": ApiKey.objects.create_key(bob, name="search", project=search)[0],
            "billing_alice": ApiKey.objects.create_key(alice, name="billing", project=billing)[0],
            "default_carol": ApiKey.objects.create_key(carol, name="laptop")[0]}
    w.prefix = {name: key.prefix for name, key in keys.items()}
    facades = {"gpt": ModelFacade.objects.create(name="gpt-test", provider="openai", base_url="http://127.0.0.1:9/v1",
                                                 upstream_model="gpt", **GPT),
               "embed": ModelFacade.objects.create(name="embed-test", provider="openai", kind="embeddings",
                                                   base_url="http://127.0.0.1:9/v1", upstream_model="embed", **EMBED)}
    tz = zone()
    now = timezone.now()
    w.days = [local_midnight(local_date(now, tz) - timedelta(days=2 - i), tz) for i in range(3)]

    def deltas(rows):
        out = []
        for name, key, facade, day, hour, minute, requests, inp, cached, output, searches, cost in rows:
            at = min(now, w.days[day] + timedelta(hours=hour, minutes=minute, seconds=7))
            out.append(UsageDelta(
                id=f"p-{name}", user_id=keys[key].user_id, key_id=keys[key].pk, facade_id=facades[facade].pk, at=at,
                requests=requests, input_tokens=inp, cached_input_tokens=cached, output_tokens=output,
                web_search_calls=searches, cost_nanos=cost))
        return out

    record_many(deltas(ROLLED))
    rollups.roll_up()  # the two past days into hour and day rows (and today's closed hours)
    record_many(deltas(LATE))
    record_many(deltas(TODAY))
    return w


def nanos(result: dict) -> int:
    value = Decimal(result["amount"]["value"]) * 10**9
    assert value == int(value) and result["amount"]["currency"] == "usd"
    return int(value)


# --- usage ----------------------------------------------------------------------------------------


def test_completions_grouped_by_project_are_exact_per_local_day(world):
    """Catches: project_id left null in results (group field unmapped), or grouped by the key's user."""
    answer = world.client().admin.organization.usage.completions(
        start_time=world.day(0), limit=3, group_by=["project_id"])
    assert [b.start_time for b in answer.data] == [world.day(i) for i in range(3)] and not answer.has_more
    got = {}
    for bucket in answer.data:
        for r in bucket.results:
            assert r.user_id is None and r.api_key_id is None and r.model is None
            got[world.label(bucket.start_time, r.project_id)] = (
                r.num_model_requests, r.input_tokens, r.input_cached_tokens, r.output_tokens)
    assert got == COMPLETIONS
    assert DEFAULT_PROJECT_PUBLIC_ID in {r.project_id for b in answer.data for r in b.results}
    ungrouped = world.client().admin.organization.usage.completions(start_time=world.day(0), limit=3)
    assert [sum(r.input_tokens for r in b.results) for b in answer.data] == [
        r.input_tokens for b in ungrouped.data for r in b.results] == [14_900, 2_100, 1_001]


def test_a_project_filter_reads_only_its_keys(world):
    """Catches: project_ids ignored (everyone's usage), or matching nothing (as before projects)."""
    completions = world.client().admin.organization.usage.completions
    only_search = completions(start_time=world.day(0), limit=3, project_ids=[world.search])
    assert [[(r.num_model_requests, r.input_tokens, r.input_cached_tokens, r.output_tokens, r.project_id)
             for r in b.results] for b in only_search.data] == [
        [(4, 4_400, 200, 540, None)], [(3, 2_000, 1_000, 300, None)], [(1, 700, 100, 70, None)]]
    per_key = completions(start_time=world.day(0), limit=3, project_ids=[world.billing, DEFAULT_PROJECT_PUBLIC_ID],
                          group_by=["project_id", "api_key_id", "user_id"])
    got = {(world.label(b.start_time, r.project_id), r.api_key_id, r.user_id): r.input_tokens
           for b in per_key.data for r in b.results}
    billing, carol = world.prefix["billing_alice"], world.prefix["default_carol"]
    assert got == {(("Billing", 0), billing, "alice"): 500, (("Billing", 1), billing, "alice"): 100,
                   (("Billing", 2), billing, "alice"): 300, (("Default", 0), carol, "carol"): 10_000,
                   (("Default", 2), carol, "carol"): 1}
    # an inactive project's usage is still read; the list parameter without brackets too
    Project.objects.filter(public_id=world.billing).update(is_active=False)
    status, body = world.raw_get(f"/v1/organization/usage/completions?start_time={world.day(0)}&limit=3"
                                 f"&project_ids={world.billing}&group_by=project_id")
    assert status == 200
    assert [[(r["project_id"], r["input_tokens"]) for r in b["results"]] for b in body["data"]] == [
        [(world.billing, 500)], [(world.billing, 100)], [(world.billing, 300)]]


def test_hourly_buckets_by_project_over_a_rolled_day_with_late_data(world):
    """Two days ago, by local hour: hour rows from the rollup, d9 added to its rolled hour afterwards."""
    answer = world.client().admin.organization.usage.completions(
        start_time=world.day(0), end_time=world.day(1), bucket_width="1h", limit=24, group_by=["project_id"])
    got = {((b.start_time - world.day(0)) // 3600, world.names[r.project_id]): (r.num_model_requests, r.input_tokens)
           for b in answer.data for r in b.results}
    assert got == {(3, "Search"): (1, 1_000), (10, "Search"): (2, 3_000), (12, "Default"): (1, 10_000),
                   (22, "Billing"): (1, 500), (23, "Search"): (1, 400)}


def test_embeddings_and_web_searches_by_project(world):
    embeddings = world.client().admin.organization.usage.embeddings(
        start_time=world.day(0), limit=3, group_by=["project_id"])
    got = {world.label(b.start_time, r.project_id): (r.num_model_requests, r.input_tokens)
           for b in embeddings.data for r in b.results}
    assert got == {("Billing", 0): (1, 800), ("Search", 1): (1, 5_000)}
    searches = world.client().admin.organization.usage.web_search_calls(
        start_time=world.day(0), limit=3, group_by=["project_id"])
    assert [(b.start_time, r.project_id, r.num_requests, r.num_model_requests)
            for b in searches.data for r in b.results] == [(world.day(1), world.billing, 1, 1)]
    only_search = world.client().admin.organization.usage.web_search_calls(
        start_time=world.day(0), limit=3, project_ids=[world.search])
    assert all(b.results == [] for b in only_search.data)


# --- costs ----------------------------------------------------------------------------------------


def test_costs_per_project_are_the_ledgers_exact_nanodollars(world):
    """Catches: costs ignoring group_by=project_id (one row a day) or a project's keys miscounted."""
    body = world.raw_costs(start_time=world.day(0), limit=3, group_by=["project_id"])
    got = {world.label(b["start_time"], r["project_id"]): nanos(r) for b in body["data"] for r in b["results"]}
    assert got == COSTS
    sdk = world.client().admin.organization.usage.costs(start_time=world.day(0), limit=3, group_by=["project_id"],
                                                        project_ids=[world.billing])
    assert [[(r.project_id, r.amount.value) for r in b.results] for b in sdk.data] == [
        [(world.billing, 0.000716)], [(world.billing, 0.01014)], [(world.billing, 0.00042)]]


def test_cost_line_items_per_project_sum_exactly_to_the_project(world):
    """With flat prices each line item is quantity x price; a project's items add up to its cost."""
    body = world.raw_costs(start_time=world.day(0), limit=3, group_by=["project_id", "line_item"],
                           project_ids=[world.search, world.billing])
    items: dict[tuple, dict] = {}
    for b in body["data"]:
        for r in b["results"]:
            items.setdefault(world.label(b["start_time"], r["project_id"]), {})[r["line_item"]] = (
                r["quantity"], nanos(r))
    assert items[("Search", 0)] == {"gpt-test, input_tokens": (4_200, 4_200_000),
                                    "gpt-test, cached_input_tokens": (200, 20_000),
                                    "gpt-test, output_tokens": (540, 2_160_000)}
    assert items[("Billing", 1)] == {"gpt-test, input_tokens": (100, 100_000), "gpt-test, output_tokens": (10, 40_000),
                                     "gpt-test, web_search_calls": (1, 10_000_000)}
    assert items[("Search", 1)]["embed-test, input_tokens"] == (5_000, 100_000)
    totals = {label: sum(n for _, n in per_item.values()) for label, per_item in items.items()}
    assert totals == {label: cost for label, cost in COSTS.items() if label[0] != "Default"}


# --- errors ---------------------------------------------------------------------------------------


def test_an_unknown_project_id_is_refused_in_openais_format(world):
    """Catches: an unknown id answered with zeros (a mistyped id would look like an idle project)."""
    with pytest.raises(openai.BadRequestError) as raised:
        world.client().admin.organization.usage.completions(start_time=world.day(0),
                                                            project_ids=[world.search, "proj_nope"])
    assert raised.value.param == "project_ids" and raised.value.code == "invalid_value"
    assert "'proj_nope'" in raised.value.message and world.search not in raised.value.message
    status, body = world.raw_get(f"/v1/organization/costs?start_time={world.day(0)}&project_ids[]=billing")
    assert status == 400 and body["error"]["param"] == "project_ids" and body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
