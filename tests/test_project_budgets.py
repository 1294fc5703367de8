"""Budgets of projects and API keys (#30): scopes beside the user and default budgets.

A project budget refuses the next request of every key in the project and only those; a key budget
refuses that key only; the headers name the tightest budget's scope. set_budget and /api/budgets/
name the subject by key prefix or project public id; /api/me/budgets/ lists every budget that
applies to the calling key."""

import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.db.models import Sum
from rest_framework.test import APIClient

from gateway.models import ApiKey, ModelFacade, Project, ProjectMember
from usage.budgets.book import BudgetBook
from usage.budgets.setting import set_budget
from usage.budgets.states import states_for
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import Budget, FiveMinuteUsage

PROMPT = [{"role": "user", "content": "What does this cost?"}]


def project_with(name, *users):
    project = Project.objects.create(name=name)
    for user in users:
        ProjectMember.objects.create(project=project, user=user)
    return project


@pytest.fixture
def teams(transactional_db, gateway_server, mock_upstream):
    """erin and finn; project Atlas (erin's key a1, finn's key f1), project Borealis (erin's key b1)."""
    erin, finn = User.objects.create_user("erin"), User.objects.create_user("finn")
    atlas, borealis = project_with("Atlas", erin, finn), project_with("Borealis", erin)
    keys = {}
    for name, user, project in (("a1", erin, atlas), ("f1", finn, atlas), ("b1", erin, borealis)):
        key, raw = ApiKey.objects.create_key(user, name=name, project=project)
        keys[name] = (key, openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key=raw, max_retries=0,
                                         timeout=20))
    ModelFacade.objects.create(name="gpt-p", provider="openai", base_url=f"{mock_upstream.url}/v1",
                               upstream_model="gpt-4o-mini", input_price_micros=150_000_000,
                               output_price_micros=600_000_000)
    mock_upstream.mock.chunk_delay = 0
    yield erin, finn, atlas, borealis, keys, gateway_server
    for _, client in keys.values():
        client.close()


def ask(client):
    return client.chat.completions.with_raw_response.create(model="gpt-p", messages=PROMPT)


def spend_of(key):
    return FiveMinuteUsage.objects.filter(key=key).aggregate(s=Sum("cost_nanos"))["s"] or 0


def test_a_project_budget_refuses_every_key_of_the_project_and_only_those(teams):
    """Catches: project budgets not applied (check by user only), or applied to every key of a member."""
    erin, finn, atlas, borealis, keys, server = teams
    set_budget(project_id=atlas.public_id, period="daily", amount_usd=Decimal("0.000001"), warn_percent=None,
               active=True)
    server.refresh()
    first = ask(keys["a1"][1])  # under the cap when it starts, over it when it ends
    assert first.headers["x-codevector-budget-scope"] == "project"
    assert first.headers["x-codevector-budget-limit-usd"] == "0.000001000"
    for name in ("a1", "f1"):  # erin's and finn's keys of Atlas: both refused
        with pytest.raises(openai.RateLimitError) as info:
            ask(keys[name][1])
        assert info.value.body["code"] == "budget_exceeded"
        assert f"project {atlas.public_id}'s daily budget is $0.000001000" in info.value.body["message"]
        assert info.value.response.headers["x-codevector-budget-scope"] == "project"
        assert info.value.response.headers["x-codevector-budget-remaining-usd"] == "0.000000000"
    answer = ask(keys["b1"][1])  # erin's key in Borealis: no budget applies
    assert answer.http_response.status_code == 200 and "x-codevector-budget-scope" not in answer.headers
    assert spend_of(keys["f1"][0]) == 0  # refusals record nothing
    assert spend_of(keys["a1"][0]) > 0 and spend_of(keys["b1"][0]) > 0


def test_a_key_budget_refuses_that_key_only(teams):
    """Catches: key budgets not applied, or applied to the key's user (every key of theirs)."""
    erin, finn, atlas, borealis, keys, server = teams
    a1 = keys["a1"][0]
    set_budget(key_prefix=a1.prefix, period="monthly", amount_usd=Decimal("0.000001"), warn_percent=None,
               active=True)
    set_budget(username="erin", period="monthly", amount_usd=Decimal("100"), warn_percent=None, active=True)
    server.refresh()
    first = ask(keys["a1"][1])
    assert first.headers["x-codevector-budget-scope"] == "key"  # the tightest of erin's and the key's
    with pytest.raises(openai.RateLimitError) as info:
        ask(keys["a1"][1])
    assert f"this API key's ({a1.prefix}) monthly budget" in info.value.body["message"]
    assert info.value.response.headers["x-codevector-budget-scope"] == "key"
    other = ask(keys["b1"][1])  # erin's other key: her own budget applies, not a1's
    assert other.http_response.status_code == 200 and other.headers["x-codevector-budget-scope"] == "user"
    assert ask(keys["f1"][1]).http_response.status_code == 200


def test_the_headers_describe_the_tightest_budget_and_name_its_scope(teams):
    erin, finn, atlas, borealis, keys, server = teams
    set_budget(username=None, period="daily", amount_usd=Decimal("50"), warn_percent=None, active=True)
    set_budget(project_id=atlas.public_id, period="weekly", amount_usd=Decimal("20"), warn_percent=None, active=True)
    set_budget(key_prefix=keys["f1"][0].prefix, period="total", amount_usd=Decimal("30"), warn_percent=None,
               active=True)
    server.refresh()
    a1 = ask(keys["a1"][1])
    assert (a1.headers["x-codevector-budget-scope"], a1.headers["x-codevector-budget-limit-usd"]) == \
        ("project", "20.000000000")
    b1 = ask(keys["b1"][1])
    assert (b1.headers["x-codevector-budget-scope"], b1.headers["x-codevector-budget-limit-usd"]) == \
        ("default", "50.000000000")


def test_the_book_counts_each_scope_from_the_snapshot_and_local_spend(transactional_db, gpt):
    """Spend read at refresh plus what this process records since, for user, key and project alike;
    a project's spend is all its keys' (two users' here)."""
    erin, finn = User.objects.create_user("erin"), User.objects.create_user("finn")
    atlas = project_with("Atlas", erin, finn)
    a1, _ = ApiKey.objects.create_key(erin, project=atlas)
    f1, _ = ApiKey.objects.create_key(finn, project=atlas)
    d1, _ = ApiKey.objects.create_key(erin)  # the Default project
    set_budget(project_id=atlas.public_id, period="total", amount_usd=Decimal("1"), warn_percent=None, active=True)
    set_budget(key_prefix=d1.prefix, period="total", amount_usd=Decimal("1"), warn_percent=None, active=True)
    now = datetime.now(UTC)
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=erin.pk, key_id=a1.pk, facade_id=gpt.pk, at=now,
                            cost_nanos=300_000_000),
                 UsageDelta(id=uuid.uuid4().hex, user_id=finn.pk, key_id=f1.pk, facade_id=gpt.pk, at=now,
                            cost_nanos=400_000_000),
                 UsageDelta(id=uuid.uuid4().hex, user_id=erin.pk, key_id=d1.pk, facade_id=gpt.pk, at=now,
                            cost_nanos=900_000_000)])
    book = BudgetBook()
    book.refresh(now)

    def spent(user, key):
        return {s.rule.scope: s.spend_nanos for s in book.states(user.pk, now, key.pk, key.project_id)}

    assert spent(erin, a1) == {"project": 700_000_000}
    assert spent(finn, f1) == {"project": 700_000_000}
    assert spent(erin, d1) == {"key": 900_000_000}
    book.add_spend(finn.pk, now, 300_000_000, f1.pk, f1.project_id)  # finn's request reaches the cap
    assert spent(erin, a1) == {"project": 1_000_000_000}
    assert book.check(erin.pk, now, a1.pk, a1.project_id).refusal is not None
    assert book.check(erin.pk, now, d1.pk, d1.project_id).refusal is None
    book.add_spend(erin.pk, now, 100_000_000, d1.pk, d1.project_id)
    assert book.check(erin.pk, now, d1.pk, d1.project_id).refusal is not None
    assert [s.spend_nanos for s in states_for(erin.pk, now, a1.pk, a1.project_id)] == [700_000_000]


def test_a_project_budget_is_not_a_second_default(db, alice):
    """Catches: "no user" still meaning default somewhere (a project budget would apply to everyone)."""
    atlas = project_with("Atlas", alice)
    set_budget(project_id=atlas.public_id, period="daily", amount_usd=Decimal("1"), warn_percent=None, active=True)
    set_budget(period="daily", amount_usd=Decimal("5"), warn_percent=None, active=True)  # the default, beside it
    assert sorted(Budget.objects.values_list("scope", flat=True)) == ["default", "project"]
    key, _ = ApiKey.objects.create_key(alice)  # the Default project
    assert [(s.rule.scope, s.rule.limit_nanos) for s in states_for(alice.pk, key_id=key.pk, project_id=key.project_id)] \
        == [("default", 5_000_000_000)]
    with pytest.raises(IntegrityError), transaction.atomic():  # the database holds a scope to its subject
        Budget.objects.create(scope="project", period="weekly", limit_nanos=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(scope="default", user=alice, period="weekly", limit_nanos=1)


def run(*args):
    out = io.StringIO()
    call_command("set_budget", *args, stdout=out)
    return out.getvalue()


def test_set_budget_names_projects_by_public_id_and_keys_by_prefix(db, alice):
    atlas = project_with("Atlas", alice)
    key, _ = ApiKey.objects.create_key(alice, project=atlas)
    assert f"Created project {atlas.public_id} monthly budget: $25.000000000, alerts at 50%, 80% (active)" in run(
        "--project", atlas.public_id, "--usd", "25", "--period", "monthly", "--alert-at", "80,50")
    assert f"Created key {key.prefix} daily budget: $1.000000000 (active)" in run(
        "--key", key.prefix, "--usd", "1", "--period", "daily")
    assert f"Updated project {atlas.public_id} monthly budget: $30.000000000, alerts at 50%, 80% (active)" in run(
        "--project", atlas.public_id, "--usd", "30", "--period", "monthly")  # thresholds kept when not given
    assert f"Updated project {atlas.public_id} monthly budget: $30.000000000 (active)" in run(
        "--project", atlas.public_id, "--usd", "30", "--period", "monthly", "--alert-at", "none")
    assert sorted((b.scope, b.period, b.limit_nanos, b.alert_percents) for b in Budget.objects.all()) == [
        ("key", "daily", 1_000_000_000, []), ("project", "monthly", 30_000_000_000, [])]


@pytest.mark.parametrize("args, message", [
    (["--project", "proj_nope", "--usd", "1", "--period", "daily"], "No project with the id 'proj_nope'"),
    (["--key", "cvk_nope", "--usd", "1", "--period", "daily"], "No API key with the prefix 'cvk_nope'"),
    (["--key", "cvk_x", "--project", "proj_y", "--usd", "1", "--period", "daily"], "not allowed with"),
    (["alice", "--usd", "1", "--period", "daily", "--alert-at", "50,eighty"], "whole percents"),
    (["alice", "--usd", "1", "--period", "daily", "--alert-at", "50,150"], "from 1 to 100"),
    (["alice", "--usd", "1", "--period", "daily", "--alert-at", "50,50"], "once"),
])
def test_set_budget_refuses_bad_subjects_and_thresholds(db, alice, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Budget.objects.exists()


@pytest.fixture
def manager(db):
    user = User.objects.create_user("manager", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=[
        "view_usage_dashboard", "add_budget", "change_budget", "delete_budget", "view_budget"]))
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_budget_api_takes_scope_key_prefix_and_project_id(manager, alice):
    atlas = project_with("Atlas", alice)
    key, _ = ApiKey.objects.create_key(alice, project=atlas)
    made = manager.post("/api/budgets/", {"scope": "project", "project": atlas.public_id, "period": "monthly",
                                          "limit_usd": "12.5", "alert_percents": [80, 50]}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert {k: body[k] for k in ("scope", "user", "key", "project", "limit_usd", "alert_percents")} == {
        "scope": "project", "user": None, "key": None, "project": atlas.public_id, "limit_usd": "12.500000000",
        "alert_percents": [50, 80]}
    assert body["state"]["spend_usd"] == "0.000000000"
    by_key = manager.post("/api/budgets/", {"key": key.prefix, "period": "daily", "limit_usd": "1"}, format="json")
    assert by_key.status_code == 201 and by_key.json()["scope"] == "key"  # the scope follows from the subject
    default = manager.post("/api/budgets/", {"period": "daily", "limit_usd": "3"}, format="json")
    assert default.status_code == 201 and default.json()["scope"] == "default"
    assert sorted(Budget.objects.values_list("scope", "period")) == [
        ("default", "daily"), ("key", "daily"), ("project", "monthly")]


@pytest.mark.parametrize("payload, field, words", [
    ({"scope": "project", "period": "daily", "limit_usd": "1"}, "project", "names its project"),
    ({"scope": "key", "project": "ATLAS", "period": "daily", "limit_usd": "1"}, "key", "names its key"),
    ({"scope": "default", "project": "ATLAS", "period": "daily", "limit_usd": "1"}, "project", "leave project empty"),
    ({"project": "proj_nope", "period": "daily", "limit_usd": "1"}, "project", "does not exist"),
    ({"project": "ATLAS", "period": "daily", "limit_usd": "1", "alert_percents": [0]}, "alert_percents",
     "greater than or equal to 1"),
    ({"project": "ATLAS", "period": "daily", "limit_usd": "1", "alert_percents": [50, 50]}, "alert_percents", "once"),
])
def test_the_budget_api_refuses_a_subject_that_does_not_match_its_scope(manager, alice, payload, field, words):
    atlas = project_with("Atlas", alice)
    payload = {k: atlas.public_id if v == "ATLAS" else v for k, v in payload.items()}
    response = manager.post("/api/budgets/", payload, format="json")
    assert response.status_code == 400
    assert words in str(response.json()[field])
    assert not Budget.objects.exists()


def test_a_second_budget_for_the_same_project_and_period_is_refused(manager, alice):
    atlas = project_with("Atlas", alice)
    set_budget(project_id=atlas.public_id, period="daily", amount_usd=Decimal(1), warn_percent=None, active=True)
    response = manager.post("/api/budgets/", {"project": atlas.public_id, "period": "daily", "limit_usd": "2"},
                            format="json")
    assert response.status_code == 400 and "already has a daily budget" in str(response.json())
    assert Budget.objects.count() == 1


def test_my_budgets_lists_every_budget_that_applies_to_the_calling_key(db, alice, gpt):
    atlas = project_with("Atlas", alice)
    key, raw = ApiKey.objects.create_key(alice, project=atlas)
    other, _ = ApiKey.objects.create_key(alice, project=atlas)
    set_budget(username="alice", period="daily", amount_usd=Decimal(10), warn_percent=None, active=True)
    set_budget(period="monthly", amount_usd=Decimal(100), warn_percent=None, active=True)
    set_budget(key_prefix=key.prefix, period="weekly", amount_usd=Decimal(5), warn_percent=None, active=True)
    set_budget(key_prefix=other.prefix, period="weekly", amount_usd=Decimal(6), warn_percent=None, active=True)
    set_budget(project_id=atlas.public_id, period="total", amount_usd=Decimal(50), warn_percent=None, active=True)
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, key_id=other.pk, facade_id=gpt.pk,
                            at=datetime.now(UTC) - timedelta(seconds=1), cost_nanos=2_000_000_000)])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    budgets = client.get("/api/me/budgets/").json()
    assert [(b["scope"], b["subject"], b["period"], b["limit_usd"], b["spend_usd"]) for b in budgets] == [
        ("user", "alice", "daily", "10.000000000", "2.000000000"),
        ("default", "default", "monthly", "100.000000000", "2.000000000"),
        ("key", key.prefix, "weekly", "5.000000000", "0.000000000"),  # the other key's spend is not this key's
        ("project", atlas.public_id, "total", "50.000000000", "2.000000000"),  # the project's is
    ]


def test_concurrent_keys_of_a_project_overshoot_its_cap_by_at_most_the_requests_in_flight(teams):
    """The user budget's bound, for a project budget spent by two users' keys at once: one process
    adds each request's spend to the project as it records it, so once the cap is crossed only the
    requests already in flight can still pass."""
    import asyncio

    erin, finn, atlas, borealis, keys, server = teams
    cap = Decimal("0.05")
    set_budget(project_id=atlas.public_id, period="daily", amount_usd=cap, warn_percent=None, active=True)
    server.refresh()

    async def hammer():
        clients = [openai.AsyncOpenAI(base_url=keys[name][1].base_url, api_key=keys[name][1].api_key, max_retries=0,
                                      timeout=20) for name in ("a1", "f1")]
        costs, refused = [], 0

        async def one_client(client):
            nonlocal refused
            for _ in range(20):
                try:
                    raw = await client.chat.completions.with_raw_response.create(model="gpt-p", messages=PROMPT)
                    costs.append(int(Decimal(raw.headers["x-codevector-cost-usd"]) * 10**9))
                except openai.RateLimitError:
                    refused += 1
                    return

        await asyncio.gather(*(one_client(clients[i % 2]) for i in range(50)))
        for client in clients:
            await client.close()
        return costs, refused

    costs, refused = asyncio.run(hammer())
    total = spend_of(keys["a1"][0]) + spend_of(keys["f1"][0])
    cap_nanos = int(cap * 10**9)
    assert total == sum(costs) and refused == 50
    assert cap_nanos <= total <= cap_nanos + 50 * max(costs)
    assert spend_of(keys["a1"][0]) > 0 and spend_of(keys["f1"][0]) > 0
