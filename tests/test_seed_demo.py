"""manage.py seed_demo: demo users, keys and facades, and a realistic history through the ledger."""

from collections import defaultdict
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db.models import Sum

from gateway.models import ApiKey, ModelFacade
from codevector.demo import DEMO_EMAIL_DOMAIN, DEMO_FACADES, seed_demo
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.calendar import local_date

NOW = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)  # a Wednesday
COUNTERS = ["requests", "error_requests", "estimated_requests", "input_tokens", "cached_input_tokens",
            "cache_write_tokens", "output_tokens", "cost_nanos"]


def five_minute_rows():
    """The whole 5-minute table, by names rather than ids."""
    return sorted(
        (row.bucket_start, row.user.username, row.facade.name, *(getattr(row, c) for c in COUNTERS))
        for row in FiveMinuteUsage.objects.select_related("user", "facade")
    )


def totals():
    return FiveMinuteUsage.objects.aggregate(**{c: Sum(c) for c in COUNTERS})


@pytest.mark.django_db
def test_it_records_exactly_the_history_it_reports():
    result = seed_demo(days=14, users=5, seed=3, now=NOW)

    assert not result.skipped
    assert totals()["requests"] == result.requests > 0
    assert totals()["cost_nanos"] == result.cost_nanos > 0
    assert FiveMinuteUsage.objects.filter(bucket_start__gt=NOW).count() == 0
    assert FiveMinuteUsage.objects.values("user").distinct().count() <= 5


@pytest.mark.django_db
def test_it_creates_demo_users_with_keys_that_cannot_log_in():
    result = seed_demo(days=3, users=6, seed=1, now=NOW)

    demo_users = User.objects.filter(email__endswith=DEMO_EMAIL_DOMAIN)
    assert sorted(u.username for u in demo_users) == sorted(result.usernames)
    assert result.users_created == 6
    assert not any(u.has_usable_password() or u.is_staff for u in demo_users)
    assert ApiKey.objects.filter(user__in=demo_users).count() == result.keys_created == 8  # heavy ones have 2
    assert all(ApiKey.objects.filter(user=u).exists() for u in demo_users)


@pytest.mark.django_db
def test_it_reuses_the_demo_facades_and_creates_the_missing_ones():
    ModelFacade.objects.create(name="gpt-4o", provider="openai", base_url="https://example.com/v1",
                               input_price_micros=1, output_price_micros=2)

    seed_demo(days=2, users=2, seed=1, now=NOW)

    assert sorted(ModelFacade.objects.values_list("name", flat=True)) == sorted(name for name, *_ in DEMO_FACADES)
    edited = ModelFacade.objects.get(name="gpt-4o")
    assert (edited.base_url, edited.input_price_micros, edited.output_price_micros) == ("https://example.com/v1", 1, 2)


@pytest.mark.django_db
def test_the_demo_facades_take_their_prices_from_the_catalog():
    """The catalog's (genai-prices 0.2.5) published prices, micro-USD: input, cached input, cache write, extended
    cache write, output per million tokens; web and file searches per 1,000 calls; tiers and variants."""
    seed_demo(days=1, users=1, seed=1, now=NOW)
    facades = {f.name: f for f in ModelFacade.objects.all()}
    assert {name: (f.catalog_ref, f.catalog_version, f.input_price_micros, f.cached_input_price_micros,
                   f.cache_write_price_micros, f.cache_write_extended_price_micros, f.output_price_micros,
                   f.web_search_price_micros, f.file_search_price_micros) for name, f in facades.items()} == {
        "gpt-4o-mini": ("openai:gpt-4o-mini", "genai-prices 0.2.5",
                        150_000, 75_000, 150_000, 150_000, 600_000, 10_000_000, 2_500_000),
        "gpt-4o": ("openai:gpt-4o", "genai-prices 0.2.5",
                   2_500_000, 1_250_000, 2_500_000, 2_500_000, 10_000_000, 10_000_000, 2_500_000),
        "text-embedding-3-small": ("openai:text-embedding-3-small", "genai-prices 0.2.5",
                                   20_000, 20_000, 20_000, 20_000, 0, 0, 0),
        "claude-sonnet-4-5": ("anthropic:claude-sonnet-4-5", "genai-prices 0.2.5",
                              3_000_000, 300_000, 3_750_000, 6_000_000, 15_000_000, 10_000_000, 0),
        "claude-haiku-4-5": ("anthropic:claude-haiku-4-5", "genai-prices 0.2.5",
                             1_000_000, 100_000, 1_250_000, 2_000_000, 5_000_000, 10_000_000, 0),
    }
    sonnet = facades["claude-sonnet-4-5"].price_rules
    assert [(t["above"], t["input_micros"], t["output_micros"]) for t in sonnet["tiers"]] == [(200_000, 6_000_000, 22_500_000)]
    assert {name: (v["input_micros"], v["output_micros"]) for name, v in facades["gpt-4o"].price_rules["variants"].items()} == {
        "batch": (1_250_000, 5_000_000), "fast": (4_250_000, 17_000_000), "priority": (4_250_000, 17_000_000)}
    assert {name: (f.upstream_model, f.base_url) for name, f in facades.items()} == {
        "gpt-4o-mini": ("gpt-4o-mini", "http://127.0.0.1:8001/v1"), "gpt-4o": ("gpt-4o", "http://127.0.0.1:8001/v1"),
        "text-embedding-3-small": ("text-embedding-3-small", "http://127.0.0.1:8001/v1"),
        "claude-sonnet-4-5": ("claude-sonnet-4-5", "http://127.0.0.1:8001"),
        "claude-haiku-4-5": ("claude-haiku-4-5", "http://127.0.0.1:8001")}


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_history():
    seed_demo(days=10, users=4, seed=42, now=NOW)
    first = five_minute_rows()
    for level in (FiveMinuteUsage, HourlyUsage, DailyUsage, MonthlyUsage):  # seed_demo rolls the history up
        level.objects.all().delete()

    seed_demo(days=10, users=4, seed=42, now=NOW)

    assert five_minute_rows() == first


@pytest.mark.django_db
def test_another_seed_gives_another_history():
    seed_demo(days=10, users=4, seed=1, now=NOW)
    first = five_minute_rows()
    for level in (FiveMinuteUsage, HourlyUsage, DailyUsage, MonthlyUsage):  # seed_demo rolls the history up
        level.objects.all().delete()

    seed_demo(days=10, users=4, seed=2, now=NOW)

    assert five_minute_rows() != first


@pytest.mark.django_db
def test_a_second_run_adds_nothing_unless_forced():
    seed_demo(days=7, users=3, seed=5, now=NOW)
    once = totals()

    again = seed_demo(days=7, users=3, seed=5, now=NOW)

    assert again.skipped
    assert totals() == once
    forced = seed_demo(days=7, users=3, seed=5, now=NOW, force=True)
    assert not forced.skipped and forced.users_created == 0
    assert totals() == {name: 2 * value for name, value in once.items()}


@pytest.mark.django_db
def test_it_adds_nothing_when_any_usage_exists(alice, gpt):
    from usage.ledger.delta import UsageDelta
    from usage.ledger.plan import record

    record(UsageDelta(id="live-1", user_id=alice.pk, facade_id=gpt.pk, at=NOW, input_tokens=10, cost_nanos=5))

    assert seed_demo(days=7, users=3, seed=5, now=NOW).skipped
    assert totals()["requests"] == 1


@pytest.mark.django_db
def test_weekends_are_quiet_and_usage_grows():
    seed_demo(days=84, users=10, seed=9, now=NOW)
    by_day = defaultdict(int)
    for bucket_start, requests in FiveMinuteUsage.objects.values_list("bucket_start", "requests"):
        by_day[local_date(bucket_start)] += requests
    days = sorted(by_day)
    weekday = [by_day[d] for d in days if d.weekday() < 5]
    weekend = [by_day[d] for d in days if d.weekday() >= 5]

    assert sum(weekend) / len(weekend) < 0.5 * sum(weekday) / len(weekday)
    assert sum(by_day[d] for d in days[-28:]) > 1.3 * sum(by_day[d] for d in days[:28])


@pytest.mark.django_db
def test_a_few_users_and_models_dominate():
    seed_demo(days=30, users=20, seed=4, now=NOW)
    per_user = sorted(FiveMinuteUsage.objects.values("user").annotate(n=Sum("requests")).values_list("n", flat=True))
    per_model = dict(FiveMinuteUsage.objects.values("facade__name").annotate(n=Sum("requests"))
                     .values_list("facade__name", "n"))

    assert sum(per_user[-4:]) > 0.4 * sum(per_user)  # the top fifth makes over 40%
    assert per_model["gpt-4o-mini"] > per_model["text-embedding-3-small"]


@pytest.mark.django_db
def test_the_command_reports_what_it_did_and_then_that_it_skipped():
    out = StringIO()
    call_command("seed_demo", "--days", "5", "--users", "3", "--seed", "2", stdout=out)
    assert "Demo history: 5 days, 3 users (3 new, 4 keys)" in out.getvalue()
    assert f"{totals()['requests']:,} requests" in out.getvalue()

    out = StringIO()
    call_command("seed_demo", "--days", "5", "--users", "3", stdout=out)
    assert "Usage exists already" in out.getvalue()


@pytest.mark.django_db
def test_the_command_refuses_nonsense():
    with pytest.raises(CommandError, match="at least 1"):
        call_command("seed_demo", "--days", "0")


@pytest.mark.django_db
def test_the_demo_has_three_teams_with_monthly_budgets_and_alerts():
    """Every demo key is in its user's team; each team's budget is its multiple of the month's spend."""
    from decimal import Decimal

    from gateway.models import Project, ProjectMember
    from usage.budgets.states import state_of
    from usage.models import Budget

    seed_demo(days=20, users=7, seed=4, now=NOW)
    teams = {p.name: p for p in Project.objects.exclude(public_id="proj_default")}
    assert sorted(teams) == ["Data platform", "Search", "Support assistant"]
    demo_keys = ApiKey.objects.filter(user__email__endswith=DEMO_EMAIL_DOMAIN).select_related("user")
    members = {(m.project_id, m.user_id): m.role for m in ProjectMember.objects.all()}
    assert all((key.project_id, key.user_id) in members for key in demo_keys)
    assert sorted(members.values()).count("owner") == 3
    budgets = {b.project.name: b for b in Budget.objects.select_related("project")}
    assert {name: (b.scope, b.period, b.alert_percents) for name, b in budgets.items()} == {
        "Support assistant": ("project", "monthly", [50, 80, 100]), "Search": ("project", "monthly", [50, 80]),
        "Data platform": ("project", "monthly", [80])}
    for name, multiple in (("Support assistant", "1.15"), ("Search", "1.6"), ("Data platform", "4")):
        state = state_of(budgets[name], NOW)
        assert state.spend_nanos > 0
        assert budgets[name].limit_nanos == max(10**9, int((Decimal(state.spend_nanos) * Decimal(multiple) / 10**9)
                                                             .quantize(Decimal(1))) * 10**9)
