"""OpenAI-shaped organization usage and costs (usage.web.openai_usage), read over real HTTP
(pytest-django's live_server) by the official openai SDK, unmodified but for its base URL and admin
key. The oracle is independent: the deltas the test records through usage.ledger.plan.record_many, added
up here per local day or hour, the days and hours found with zoneinfo (not usage.calendar, which
the code under test uses), and the costs' line items split here with fractions. Every bucket and
every line item is exact, and the buckets of a range add up to usage.reads.queries.totals_between over it."""

import json
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from math import floor
from zoneinfo import ZoneInfo

import openai
import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from gateway.models import ApiKey, ModelFacade
from usage import rollups
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.reads import queries
from usage.reads.openai import apportion
from usage.pricing import Prices, cost_nanos

ZONE = "Asia/Kolkata"  # +5:30: local days and hours that are not UTC's
TZ = ZoneInfo(ZONE)
GPT = Prices(input_micros=150_000, cached_input_micros=75_000, output_micros=600_000)
SONNET = Prices(input_micros=3_000_000, cached_input_micros=300_000, cache_write_micros=3_750_000,
                output_micros=15_000_000)
EMBED = Prices(input_micros=20_000)
# Prices with fractions of a nanodollar per token ($0.01875 and $0.0375 per million: 18.75 and 37.5
# nanodollars a token), so requests' costs are rounded.
CHEAP = Prices(input_micros=18_750, cached_input_micros=1_875, output_micros=37_500)
TOKEN_FIELDS = ("requests", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                "cost_nanos")


def make_facade(name, provider, prices, kind="chat"):
    return ModelFacade.objects.create(
        name=name, provider=provider, kind=kind, base_url="http://127.0.0.1:9/v1", upstream_model=name,
        input_price_micros=prices.input_micros, cached_input_price_micros=prices.cached_input_micros,
        cache_write_price_micros=prices.cache_write_micros, output_price_micros=prices.output_micros)


class World:
    """Users, keys, facades and the deltas recorded, with the oracle's sums."""

    def __init__(self, url):
        self.url = url
        self.deltas: list[UsageDelta] = []
        self.prices: dict[int, Prices] = {}
        self.kind: dict[int, str] = {}
        self.model: dict[int, str] = {}
        self.prefix: dict[int, str] = {}
        self.username: dict[int, str] = {}

    def client(self, key):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", admin_api_key=key, max_retries=0,
                             timeout=20)

    def record(self, deltas):
        record_many(deltas)
        self.deltas += deltas

    def sums(self, bucket_of, group, kind=None, since=None, until=None):
        """{(bucket start, *group values): {counter: sum}} of the deltas (kind: of those facades)."""
        out = defaultdict(lambda: dict.fromkeys(TOKEN_FIELDS, 0))
        for d in self.deltas:
            if kind and self.kind[d.facade_id] != kind:
                continue
            if since and d.at < since or until and d.at >= until:  # since and until: local midnights
                continue
            values = {"user_id": self.username[d.user_id], "api_key_id": self.prefix[d.key_id],
                      "model": self.model[d.facade_id]}
            row = out[(int(bucket_of(d.at).timestamp()), *(values[g] for g in group))]
            for name in TOKEN_FIELDS:
                row[name] += getattr(d, name)
        return dict(out)


def day_of(at):
    """The local midnight that starts the day holding `at`."""
    local = at.astimezone(TZ)
    return datetime(local.year, local.month, local.day, tzinfo=TZ)


def hour_of(at):
    return at.astimezone(TZ).replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def world(live_server, settings, transactional_db):
    settings.TIME_ZONE = ZONE
    w = World(live_server.url)
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    _, w.admin_key = ApiKey.objects.create_key(root, name="admin")
    alice_keys = [ApiKey.objects.create_key(alice, name=n) for n in ("laptop", "ci")]
    bob_key, _ = ApiKey.objects.create_key(bob, name="laptop")
    w.alice_raw = alice_keys[0][1]
    keys = [alice_keys[0][0], alice_keys[1][0], bob_key]
    facades = [make_facade("gpt-test", "openai", GPT), make_facade("claude-test", "anthropic", SONNET),
               make_facade("embed-test", "openai", EMBED, kind="embeddings"),
               make_facade("cheap-test", "openai", CHEAP)]
    tiny = make_facade("tiny-test", "openai", CHEAP)
    for f in [*facades, tiny]:
        w.prices[f.pk], w.kind[f.pk], w.model[f.pk] = f.prices, f.kind, f.name
    for k in keys:
        w.prefix[k.pk], w.username[k.pk] = k.prefix, k.user.username
    w.username.update({alice.pk: "alice", bob.pk: "bob"})

    now = timezone.now()
    w.today = day_of(now)
    w.first_day = w.today - timedelta(days=6)  # wall-clock arithmetic: a local midnight
    number = 0

    def delta(key, facade, at, requests=1, inp=0, cached=0, writes=0, out=0):
        nonlocal number
        number += 1
        cost = cost_nanos(facade.prices, input_tokens=inp, cached_input_tokens=cached, cache_write_tokens=writes,
                          output_tokens=out)
        return UsageDelta(id=f"t-{number}", user_id=key.user_id, key_id=key.pk, facade_id=facade.pk, at=at,
                                 requests=requests, input_tokens=inp, cached_input_tokens=cached,
                                 cache_write_tokens=writes, output_tokens=out, cost_nanos=cost)

    history = []
    for day in range(6):  # six whole past days, several hours each, every key and facade
        midnight = w.first_day + timedelta(days=day)
        for i, (key, facade) in enumerate((k, f) for k in keys for f in facades):
            at = midnight + timedelta(hours=(3 * i + day) % 24, minutes=7 * i % 60, seconds=13)
            inp = 1_000 + 37 * i + 101 * day
            cached = inp // 3 if facade.name != "embed-test" else 0
            writes = inp // 7 if facade.name == "claude-test" else 0
            out = 0 if facade.name == "embed-test" else 211 + 17 * i + day
            history.append(delta(key, facade, at, requests=1 + i % 3, inp=inp, cached=cached, writes=writes, out=out))
        # a request costing 18.75 + 37.5 = 56.25 nanodollars before its one rounding (1 input, 1 output token)
        history.append(delta(keys[2], tiny, midnight + timedelta(hours=23, minutes=59), inp=1, out=1))
    w.record(history)
    rollups.roll_up()  # the past days are rolled into hours, days (and months)
    late = [delta(keys[0], facades[1], w.first_day + timedelta(days=1, hours=5), inp=5_000, cached=1_000,
                  writes=500, out=700),
            delta(keys[1], facades[2], w.first_day + timedelta(days=2, hours=1), inp=333)]
    w.record(late)  # late data: added to the rolled levels by the ledger
    today = [delta(keys[0], facades[0], min(now, w.today + timedelta(minutes=m)), inp=400 + m, cached=100, out=50)
             for m in (0, 1, 6)]
    w.record(today)  # the current day: 5-minute rows, not rolled
    return w


def all_pages(call, **params):
    """Every page of a listing, following has_more/next_page; (buckets, number of pages)."""
    buckets, pages, page = [], 0, None
    while True:
        answer = call(**params, **({"page": page} if page else {}))
        pages += 1
        buckets += answer.data
        if not answer.has_more:
            return buckets, pages
        assert answer.next_page
        page = answer.next_page


def raw_get(world, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{world.url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read(), parse_float=Decimal)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read(), parse_float=Decimal)


# --- completions and embeddings -------------------------------------------------------------------


def test_completions_by_key_and_model_per_local_day_paged_are_exact(world):
    client = world.client(world.admin_key)
    start = int(world.first_day.timestamp())
    buckets, pages = all_pages(client.admin.organization.usage.completions, start_time=start, bucket_width="1d",
                               group_by=["api_key_id", "model"], limit=2)
    assert pages == 4  # seven local days (six past and today), two per page
    assert [b.start_time for b in buckets] == [int((world.first_day + timedelta(days=i)).timestamp())
                                               for i in range(7)]
    assert all(b.end_time == int((datetime.fromtimestamp(b.start_time, TZ) + timedelta(days=1)).timestamp())
               for b in buckets)
    got = {}
    for b in buckets:
        for r in b.results:
            assert isinstance(r, openai.types.admin.organization.usage_completions_response.
                              DataResultOrganizationUsageCompletionsResult)
            assert r.object == "organization.usage.completions.result"
            assert r.user_id is None and r.project_id is None and r.batch is None
            assert r.input_uncached_tokens == r.input_tokens - r.input_cached_tokens - r.input_cache_write_tokens
            got[(b.start_time, r.api_key_id, r.model)] = {
                "requests": r.num_model_requests, "input_tokens": r.input_tokens,
                "cached_input_tokens": r.input_cached_tokens, "cache_write_tokens": r.input_cache_write_tokens,
                "output_tokens": r.output_tokens}
    expected = {k: {n: v[n] for n in TOKEN_FIELDS if n != "cost_nanos"}
                for k, v in world.sums(day_of, ("api_key_id", "model"), kind="chat").items()}
    assert got == expected
    assert {k[2] for k in got} == {"gpt-test", "claude-test", "cheap-test", "tiny-test"}  # chat facades only


def test_embeddings_by_user_are_exact_and_count_only_embeddings_facades(world):
    client = world.client(world.admin_key)
    start = int(world.first_day.timestamp())
    buckets, _ = all_pages(client.admin.organization.usage.embeddings, start_time=start, group_by=["user_id"],
                           limit=3)
    got = {(b.start_time, r.user_id): (r.num_model_requests, r.input_tokens) for b in buckets for r in b.results}
    assert all(r.object == "organization.usage.embeddings.result" and r.model is None
               for b in buckets for r in b.results)
    expected = {k: (v["requests"], v["input_tokens"]) for k, v in world.sums(day_of, ("user_id",),
                                                                              kind="embeddings").items()}
    assert got == expected and got


def test_the_buckets_add_up_to_the_usage_api_totals(world):
    client = world.client(world.admin_key)
    start = int(world.first_day.timestamp())
    completions, _ = all_pages(client.admin.organization.usage.completions, start_time=start, limit=31)
    embeddings, _ = all_pages(client.admin.organization.usage.embeddings, start_time=start, limit=31)
    costs, _ = all_pages(_raw_costs(world), start_time=start, limit=31)
    end = datetime.fromtimestamp(completions[-1].end_time, TZ)
    totals = queries.totals_between(world.first_day, end)
    requests = sum(r.num_model_requests for b in completions + embeddings for r in b.results)
    prompt = sum(r.input_tokens for b in completions + embeddings for r in b.results)
    output = sum(r.output_tokens for b in completions for r in b.results)
    nanos = sum(_nanos(r) for b in costs for r in b["results"])
    assert (requests, prompt, output, nanos) == (totals.requests, totals.input_tokens, totals.output_tokens,
                                                 totals.cost_nanos)
    assert totals.requests == sum(d.requests for d in world.deltas)
    assert totals.cost_nanos == sum(d.cost_nanos for d in world.deltas)


def test_hourly_buckets_are_exact_over_a_rolled_day_and_today(world):
    client = world.client(world.admin_key)
    day = world.first_day + timedelta(days=2)
    buckets, pages = all_pages(client.admin.organization.usage.completions, start_time=int(day.timestamp()),
                               end_time=int((day + timedelta(days=1)).timestamp()), bucket_width="1h",
                               group_by=["model"], limit=10)
    assert pages == 3 and len(buckets) == 24
    assert all(b.end_time - b.start_time == 3600 for b in buckets)
    got = {(b.start_time, r.model): (r.num_model_requests, r.input_tokens, r.output_tokens)
           for b in buckets for r in b.results}
    expected = {k: (v["requests"], v["input_tokens"], v["output_tokens"])
                for k, v in world.sums(hour_of, ("model",), kind="chat", since=day,
                                       until=day + timedelta(days=1)).items()}
    assert got == expected and got
    today, _ = all_pages(client.admin.organization.usage.completions, start_time=int(world.today.timestamp()),
                         bucket_width="1h")
    got = {b.start_time: sum(r.input_tokens for r in b.results) for b in today if b.results}
    assert got == {k[0]: v["input_tokens"] for k, v in world.sums(hour_of, (), kind="chat",
                                                                   since=world.today).items()}


def test_filters_and_start_time_inside_a_day(world):
    client = world.client(world.admin_key)
    alice_laptop = next(p for k, p in world.prefix.items() if world.username[k] == "alice")
    mid_day = int((world.first_day + timedelta(hours=13, minutes=17)).timestamp())
    answer = client.admin.organization.usage.completions(start_time=mid_day, limit=1, models=["claude-test"],
                                                         api_key_ids=[alice_laptop], user_ids=["alice"])
    bucket = answer.data[0]
    assert bucket.start_time == int(world.first_day.timestamp())  # the local day holding start_time
    expected = world.sums(day_of, ("api_key_id", "model"), kind="chat")[
        (bucket.start_time, alice_laptop, "claude-test")]
    assert [(r.num_model_requests, r.input_tokens) for r in bucket.results] == [
        (expected["requests"], expected["input_tokens"])]
    assert answer.has_more and answer.next_page
    with pytest.raises(openai.BadRequestError) as raised:  # unknown projects: tests/test_openai_usage_projects.py
        client.admin.organization.usage.completions(start_time=mid_day, project_ids=["proj_x"])
    assert raised.value.param == "project_ids"
    batch = client.admin.organization.usage.completions(start_time=mid_day, batch=True)
    assert all(b.results == [] for b in batch.data)


def test_list_parameters_are_accepted_without_brackets_too(world):
    start = int(world.first_day.timestamp())
    status, body = raw_get(world, f"/v1/organization/usage/completions?start_time={start}&group_by=model"
                                  f"&group_by=user_id&models=gpt-test&limit=1", world.admin_key)
    assert status == 200
    assert {(r["model"], r["user_id"]) for r in body["data"][0]["results"]} == {("gpt-test", "alice"),
                                                                                ("gpt-test", "bob")}


# --- costs ----------------------------------------------------------------------------------------


def _raw_costs(world):
    """costs(), answering the raw JSON with amounts as Decimals (the SDK parses them as floats)."""
    client = world.client(world.admin_key)

    def call(**params):
        raw = client.admin.organization.usage.with_raw_response.costs(**params)
        body = json.loads(raw.http_response.content, parse_float=Decimal)
        return type("Page", (), {"data": body["data"], "has_more": body["has_more"],
                                 "next_page": body["next_page"]})()
    return call


def _nanos(result) -> int:
    value = result["amount"]["value"]
    assert isinstance(value, Decimal | int) and result["amount"]["currency"] == "usd"
    nanos = Decimal(value) * 10**9
    assert nanos == int(nanos)  # at most 9 digits after the point
    return int(nanos)


def test_costs_per_day_are_the_ledgers_exact_nanodollars(world):
    start = int(world.first_day.timestamp())
    buckets, pages = all_pages(_raw_costs(world), start_time=start, limit=3)
    assert pages == 3
    got = {b["start_time"]: sum(_nanos(r) for r in b["results"]) for b in buckets if b["results"]}
    assert got == {k[0]: v["cost_nanos"] for k, v in world.sums(day_of, ()).items()}
    sdk = world.client(world.admin_key).admin.organization.usage.costs(start_time=start, limit=7)
    result = sdk.data[0].results[0]
    assert result.object == "organization.costs.result" and result.amount.currency == "usd"
    assert result.line_item is None and result.project_id is None
    assert result.amount.value == pytest.approx(got[sdk.data[0].start_time] / 1e9)


def test_costs_by_key_add_up_to_the_day(world):
    start = int(world.first_day.timestamp())
    buckets, _ = all_pages(_raw_costs(world), start_time=start, group_by=["api_key_id", "user_id"], limit=7)
    got = {(b["start_time"], r["api_key_id"], r["user_id"]): _nanos(r) for b in buckets for r in b["results"]}
    assert got == {k: v["cost_nanos"] for k, v in world.sums(day_of, ("api_key_id", "user_id")).items()}


def largest_remainder(total: int, weights: list[int]) -> list[int]:
    """The oracle's split (independent of usage.reads.openai.apportion): each share an exact fraction,
    floored; the nanodollars left go one each to the largest fractional parts, ties to the earlier."""
    shares = [Fraction(total * w, sum(weights)) for w in weights]
    parts = [floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (parts[i] - shares[i], i))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def test_line_items_split_each_models_exact_cost_over_its_token_classes(world):
    """Each model's recorded cost of a day is shared over its token classes (uncached input, cached
    reads, cache writes, output: the order ties go by) in proportion to quantity x base price: every
    item exactly, and each model's items add up to its recorded cost."""
    start = int(world.first_day.timestamp())
    buckets, _ = all_pages(_raw_costs(world), start_time=start, group_by=["line_item"], limit=7)
    got = {}
    for b in buckets:
        for r in b["results"]:
            assert r["quantity_unit"] == "tokens"
            got[(b["start_time"], r["line_item"])] = (r["quantity"], _nanos(r))
    prices = {world.model[pk]: p for pk, p in world.prices.items()}
    expected = {}
    for (day, model), sums in world.sums(day_of, ("model",)).items():
        p = prices[model]
        quantities = {"input_tokens": sums["input_tokens"] - sums["cached_input_tokens"] - sums["cache_write_tokens"],
                      "cached_input_tokens": sums["cached_input_tokens"],
                      "cache_write_tokens": sums["cache_write_tokens"], "output_tokens": sums["output_tokens"]}
        micros = [p.input_micros, p.cached_input_micros, p.cache_write_micros, p.output_micros]
        split = largest_remainder(sums["cost_nanos"], [q * m for q, m in zip(quantities.values(), micros)])
        assert sum(split) == sums["cost_nanos"]
        for (name, quantity), nanos in zip(quantities.items(), split):
            if quantity or nanos:
                expected[(day, f"{model}, {name}")] = (quantity, nanos)
    assert got == expected


def test_line_items_of_one_rounded_request(world):
    """1 input and 1 output token of tiny-test cost 18.75 + 37.5 = 56.25 nanodollars, recorded as 56;
    split 1:2 by price, 18.67 and 37.33: by largest remainder 19 and 37, adding up to the 56 recorded."""
    assert apportion(56, [18_750, 37_500]) == [19, 37]
    assert apportion(10, [1, 1, 1]) == [4, 3, 3] and apportion(0, [0, 0]) == [0, 0] and apportion(5, [0, 0]) == [5, 0]
    lone = [d for d in world.deltas if world.model[d.facade_id] == "tiny-test"]
    assert len(lone) == 6 and {d.cost_nanos for d in lone} == {56}
    start = int(world.first_day.timestamp())
    answer = _raw_costs(world)(start_time=start, group_by=["line_item", "api_key_id"], limit=1,
                               line_items=["tiny-test, input_tokens", "tiny-test, output_tokens"])
    items = [(r["line_item"], r["api_key_id"], r["quantity"], _nanos(r)) for r in answer.data[0]["results"]]
    bob = world.prefix[lone[0].key_id]
    assert items == [("tiny-test, input_tokens", bob, 1, 19), ("tiny-test, output_tokens", bob, 1, 37)]
    only_output = _raw_costs(world)(start_time=start, limit=1, line_items=["tiny-test, output_tokens"])
    assert [_nanos(r) for r in only_output.data[0]["results"]] == [37]


# --- errors ---------------------------------------------------------------------------------------


def test_a_key_without_the_permission_gets_403_in_openais_format(world):
    start = int(world.first_day.timestamp())
    with pytest.raises(openai.PermissionDeniedError) as raised:
        world.client(world.alice_raw).admin.organization.usage.completions(start_time=start)
    assert raised.value.status_code == 403 and raised.value.code == "insufficient_permissions"
    status, body = raw_get(world, f"/v1/organization/costs?start_time={start}", world.alice_raw)
    assert status == 403 and set(body["error"]) == {"message", "type", "param", "code"}


def test_no_key_or_an_unknown_key_gets_401(world):
    start = int(world.first_day.timestamp())
    status, body = raw_get(world, f"/v1/organization/usage/completions?start_time={start}")
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        world.client("cvk_not-a-key").admin.organization.usage.embeddings(start_time=start)


def test_bad_parameters_get_400_in_openais_format(world):
    client = world.client(world.admin_key)
    start = int(world.first_day.timestamp())
    with pytest.raises(openai.BadRequestError) as raised:
        client.admin.organization.usage.completions(start_time=start, bucket_width="1m")
    assert raised.value.param == "bucket_width" and "5 minutes" in raised.value.message
    for call, params, param in [
        (client.admin.organization.usage.completions, {"limit": 32}, "limit"),
        (client.admin.organization.usage.embeddings, {"bucket_width": "1h", "limit": 169}, "limit"),
        (client.admin.organization.usage.costs, {"limit": 181}, "limit"),
        (client.admin.organization.usage.costs, {"bucket_width": "1h"}, "bucket_width"),
        (client.admin.organization.usage.completions, {"group_by": ["service_tier"]}, "group_by"),
        (client.admin.organization.usage.completions, {"end_time": start}, "end_time"),
        (client.admin.organization.usage.completions, {"page": "garbage"}, "page"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            call(start_time=start, **params)
        assert raised.value.param == param and raised.value.body["type"] == "invalid_request_error"
    status, body = raw_get(world, "/v1/organization/usage/completions", world.admin_key)
    assert status == 400 and body["error"]["param"] == "start_time"


# --- extended cache writes and server-side searches ----------------------------------------------

# $3 input, $0.30 cached, $3.75 a 5-minute write, $6 a 1-hour write, $15 output per million tokens: 3,000,
# 300, 3,750, 6,000 and 15,000 nanodollars a token; $10 per 1,000 web searches and $2.50 per 1,000 file
# searches: 10,000,000 and 2,500,000 nanodollars a call. The priority variant bills everything twice.
SEARCH_PRICES = {"input_price_micros": 3_000_000, "cached_input_price_micros": 300_000,
                 "cache_write_price_micros": 3_750_000, "cache_write_extended_price_micros": 6_000_000,
                 "output_price_micros": 15_000_000, "web_search_price_micros": 10_000_000,
                 "file_search_price_micros": 2_500_000}
PRIORITY = {"input_micros": 6_000_000, "cached_input_micros": 600_000, "cache_write_micros": 7_500_000,
            "cache_write_extended_micros": 12_000_000, "output_micros": 30_000_000,
            "web_search_micros": 20_000_000, "file_search_micros": 5_000_000}


@pytest.fixture
def searches(world):
    """Two requests to search-test on the fourth day, 10:00 local:
    alice's: 10,000 input tokens of which 2,000 cached and 3,000 written (1,000 of them for an hour), 500
    output, 2 web searches, at the base prices: 5,000 x 3,000 + 2,000 x 300 + 2,000 x 3,750 + 1,000 x 6,000
    + 500 x 15,000 + 2 x 10,000,000 = 15,000,000 + 600,000 + 7,500,000 + 6,000,000 + 7,500,000 + 20,000,000
    = 56,600,000 nanodollars;
    bob's: 1,000 input tokens, 100 output, 1 web search and 3 file searches, served at priority: twice
    1,000 x 3,000 + 100 x 15,000 + 10,000,000 + 3 x 2,500,000 = twice 22,000,000 = 44,000,000."""
    facade = ModelFacade.objects.create(
        name="search-test", provider="openai", base_url="http://127.0.0.1:9/v1", upstream_model="search-test",
        price_rules={"variants": {"priority": PRIORITY}}, **SEARCH_PRICES)
    world.kind[facade.pk], world.model[facade.pk] = "chat", "search-test"
    alice_key = ApiKey.objects.get(user__username="alice", name="laptop")
    bob_key = ApiKey.objects.get(user__username="bob")
    at = world.first_day + timedelta(days=3, hours=10)
    world.record([
        UsageDelta(id="s-alice", user_id=alice_key.user_id, key_id=alice_key.pk, facade_id=facade.pk, at=at,
                          requests=1, input_tokens=10_000, cached_input_tokens=2_000, cache_write_tokens=3_000,
                          cache_write_extended_tokens=1_000, output_tokens=500, web_search_calls=2,
                          cost_nanos=56_600_000),
        UsageDelta(id="s-bob", user_id=bob_key.user_id, key_id=bob_key.pk, facade_id=facade.pk,
                          at=at + timedelta(minutes=20), requests=1, input_tokens=1_000, output_tokens=100,
                          web_search_calls=1, file_search_calls=3, cost_nanos=44_000_000)])
    world.search_day = world.first_day + timedelta(days=3)
    world.search_alice, world.search_bob = alice_key.prefix, bob_key.prefix
    return world


def test_line_items_carry_extended_writes_and_searches_and_add_up_to_the_recorded_cost(searches):
    """The day's search-test quantities: 6,000 uncached input tokens (5,000 + 1,000), 2,000 cached, 2,000
    5-minute writes (3,000 - 1,000), 1,000 1-hour writes, 600 output, 3 web and 3 file searches. At the base
    prices they weigh 18,000,000, 600,000, 7,500,000, 6,000,000, 9,000,000, 30,000,000 and 7,500,000
    nanodollars (78,600,000); the 100,600,000 recorded (56,600,000 + 44,000,000 at priority) is shared in
    those proportions: floors 23,038,167, 767,938, 9,599,236, 7,679,389, 11,519,083, 38,396,946 and
    9,599,236 (100,599,995), remainders (x 1/78,600,000) 73.8M, 73.2M, 50.4M, 24.6M, 76.2M, 44.4M and
    50.4M: the 5 nanodollars left go to output, input, cached, the 5-minute writes and the file searches."""
    day = int(searches.search_day.timestamp())
    answer = _raw_costs(searches)(start_time=day, limit=1, group_by=["line_item"])
    results = answer.data[0]["results"]
    items = [(r["line_item"], r["quantity"], r["quantity_unit"], _nanos(r)) for r in results
             if r["line_item"].startswith("search-test, ")]
    assert items == [
        ("search-test, cache_write_extended_tokens", 1_000, "tokens", 7_679_389),
        ("search-test, cache_write_tokens", 2_000, "tokens", 9_599_237),
        ("search-test, cached_input_tokens", 2_000, "tokens", 767_939),
        ("search-test, file_search_calls", 3, "calls", 9_599_237),
        ("search-test, input_tokens", 6_000, "tokens", 23_038_168),
        ("search-test, output_tokens", 600, "tokens", 11_519_084),
        ("search-test, web_search_calls", 3, "calls", 38_396_946),
    ]
    assert sum(n for *_, n in items) == 100_600_000
    # every model's items add up to the day's exact total, the recorded searches' cost included
    day_total = searches.sums(day_of, ())[(day,)]["cost_nanos"]
    assert sum(_nanos(r) for r in results) == day_total
    ungrouped = _raw_costs(searches)(start_time=day, limit=1)
    assert [_nanos(r) for r in ungrouped.data[0]["results"]] == [day_total]
    assert day_total == sum(d.cost_nanos for d in searches.deltas if day_of(d.at) == searches.search_day)


def test_line_items_per_key_of_flat_priced_requests_are_quantity_times_price(searches):
    """alice's request was billed at the base prices without rounding: each item is its quantity x price;
    bob's, at priority, is twice his base-price weights (3,000,000, 1,500,000, 10,000,000, 7,500,000)."""
    day = int(searches.search_day.timestamp())
    answer = _raw_costs(searches)(start_time=day, limit=1, group_by=["line_item", "api_key_id"],
                                  line_items=[f"search-test, {name}" for name in (
                                      "input_tokens", "cached_input_tokens", "cache_write_tokens",
                                      "cache_write_extended_tokens", "output_tokens", "web_search_calls",
                                      "file_search_calls")])
    got = {(r["api_key_id"], r["line_item"].split(", ")[1]): (r["quantity"], _nanos(r))
           for r in answer.data[0]["results"]}
    a, b = searches.search_alice, searches.search_bob
    assert got == {
        (a, "input_tokens"): (5_000, 15_000_000), (a, "cached_input_tokens"): (2_000, 600_000),
        (a, "cache_write_tokens"): (2_000, 7_500_000), (a, "cache_write_extended_tokens"): (1_000, 6_000_000),
        (a, "output_tokens"): (500, 7_500_000), (a, "web_search_calls"): (2, 20_000_000),
        (b, "input_tokens"): (1_000, 6_000_000), (b, "output_tokens"): (100, 3_000_000),
        (b, "web_search_calls"): (1, 20_000_000), (b, "file_search_calls"): (3, 15_000_000),
    }
    only_searches = _raw_costs(searches)(start_time=day, limit=1, line_items=["search-test, web_search_calls"])
    assert [_nanos(r) for r in only_searches.data[0]["results"]] == [38_396_946]  # as in the day's split


def test_web_search_calls_per_model_and_user_read_by_the_sdk(searches):
    client = searches.client(searches.admin_key)
    start = int(searches.first_day.timestamp())
    buckets, pages = all_pages(client.admin.organization.usage.web_search_calls, start_time=start,
                               group_by=["model", "user_id"], limit=3)
    assert pages == 3 and len(buckets) == 7
    results = {b.start_time: b.results for b in buckets if b.results}
    assert list(results) == [int(searches.search_day.timestamp())]  # no other day had a search
    types = openai.types.admin.organization.usage_web_search_calls_response
    got = []
    for r in results[int(searches.search_day.timestamp())]:
        assert isinstance(r, types.DataResultOrganizationUsageWebSearchesResult)
        assert r.object == "organization.usage.web_searches.result"
        assert r.project_id is None and r.api_key_id is None and r.context_level is None and r.api_source is None
        got.append((r.model, r.user_id, r.num_requests, r.num_model_requests))
    assert got == [("search-test", "alice", 2, 1), ("search-test", "bob", 1, 1)]
    # ungrouped: the 3 searches, among the 2 requests of the one model that searched that day (the other
    # models' requests that day are not counted)
    day = client.admin.organization.usage.web_search_calls(start_time=int(searches.search_day.timestamp()),
                                                            limit=1)
    assert [(r.num_requests, r.num_model_requests, r.model) for r in day.data[0].results] == [(3, 2, None)]
    hourly = client.admin.organization.usage.web_search_calls(
        start_time=int(searches.search_day.timestamp()), bucket_width="1h", limit=24, api_key_ids=[searches.search_bob])
    assert [(b.start_time - int(searches.search_day.timestamp()), [r.num_requests for r in b.results])
            for b in hourly.data if b.results] == [(10 * 3600, [1])]
    for params in ({"models": ["gpt-test"]}, {"context_levels": ["high"]}):
        nothing = client.admin.organization.usage.web_search_calls(start_time=start, limit=7, **params)
        assert all(b.results == [] for b in nothing.data), params


def test_file_search_calls_per_key_read_by_the_sdk(searches):
    client = searches.client(searches.admin_key)
    day = int(searches.search_day.timestamp())
    answer = client.admin.organization.usage.file_search_calls(start_time=day, limit=1, group_by=["api_key_id"])
    (result,) = answer.data[0].results
    assert isinstance(result, openai.types.admin.organization.usage_file_search_calls_response.
                      DataResultOrganizationUsageFileSearchesResult)
    assert (result.object, result.num_requests, result.api_key_id, result.user_id, result.vector_store_id) == (
        "organization.usage.file_searches.result", 3, searches.search_bob, None, None)
    status, body = raw_get(searches, f"/v1/organization/usage/file_search_calls?start_time={day}&limit=1"
                                     "&group_by=model&group_by=user_id", searches.admin_key)
    assert status == 200 and [(r["model"], r["user_id"], r["num_requests"]) for r in body["data"][0]["results"]] == [
        ("search-test", "bob", 3)]
    nothing = client.admin.organization.usage.file_search_calls(start_time=day, limit=1, vector_store_ids=["vs_1"])
    assert nothing.data[0].results == []


def test_the_search_endpoints_refuse_what_codevector_cannot_group_by(searches):
    client = searches.client(searches.admin_key)
    start = int(searches.first_day.timestamp())
    for call, params, param in [
        (client.admin.organization.usage.web_search_calls, {"group_by": ["context_level"]}, "group_by"),
        (client.admin.organization.usage.file_search_calls, {"group_by": ["vector_store_id"]}, "group_by"),
        (client.admin.organization.usage.web_search_calls, {"bucket_width": "1m"}, "bucket_width"),
        (client.admin.organization.usage.file_search_calls, {"limit": 32}, "limit"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            call(start_time=start, **params)
        assert raised.value.param == param
    with pytest.raises(openai.PermissionDeniedError):
        searches.client(searches.alice_raw).admin.organization.usage.web_search_calls(start_time=start)
