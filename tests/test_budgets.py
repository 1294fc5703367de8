"""usage.budgets (periods, rules, setting): periods in local time, which budgets apply, thresholds; manage.py set_budget."""

import io
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command

from usage.budgets.periods import budget_period_bounds
from usage.budgets.rules import BudgetRule, BudgetState, applicable, tightest
from usage.money import usd_to_nanos
from usage.models import Budget

NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


@pytest.mark.parametrize(
    "period, now, tz, start, reset",
    [
        ("daily", datetime(2026, 3, 8, 12, 0, tzinfo=UTC), NY,
         datetime(2026, 3, 8, 5, 0, tzinfo=UTC), datetime(2026, 3, 9, 4, 0, tzinfo=UTC)),  # a 23-hour day
        ("daily", datetime(2026, 11, 1, 12, 0, tzinfo=UTC), NY,
         datetime(2026, 11, 1, 4, 0, tzinfo=UTC), datetime(2026, 11, 2, 5, 0, tzinfo=UTC)),  # a 25-hour day
        ("daily", datetime(2026, 1, 1, 18, 29, 59, tzinfo=UTC), KOLKATA,
         datetime(2025, 12, 31, 18, 30, tzinfo=UTC), datetime(2026, 1, 1, 18, 30, tzinfo=UTC)),
        ("daily", datetime(2026, 1, 1, 18, 30, tzinfo=UTC), KOLKATA,
         datetime(2026, 1, 1, 18, 30, tzinfo=UTC), datetime(2026, 1, 2, 18, 30, tzinfo=UTC)),
        ("weekly", datetime(2026, 11, 25, 10, 0, tzinfo=UTC), ZoneInfo("UTC"),  # a Wednesday
         datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)),
        ("weekly", datetime(2026, 11, 23, 3, 0, tzinfo=UTC), NY,  # Sunday evening in New York
         datetime(2026, 11, 16, 5, 0, tzinfo=UTC), datetime(2026, 11, 23, 5, 0, tzinfo=UTC)),
        ("monthly", datetime(2026, 12, 31, 23, 0, tzinfo=UTC), KOLKATA,  # already January in Kolkata
         datetime(2026, 12, 31, 18, 30, tzinfo=UTC), datetime(2027, 1, 31, 18, 30, tzinfo=UTC)),
        ("monthly", datetime(2026, 2, 10, tzinfo=UTC), ZoneInfo("UTC"),
         datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
        ("total", datetime(2026, 2, 10, tzinfo=UTC), ZoneInfo("UTC"), None, None),
    ],
)
def test_periods_follow_local_calendar_boundaries(period, now, tz, start, reset):
    assert budget_period_bounds(period, now, tz) == (start, reset)


def test_a_users_own_budget_wins_and_defaults_fill_the_periods_they_lack():
    rules = [
        BudgetRule(1, "default", None, "daily", 10, None),
        BudgetRule(2, "default", None, "monthly", 100, None),
        BudgetRule(3, "user", 7, "daily", 50, None),
        BudgetRule(4, "user", 8, "total", 5, None),
        BudgetRule(5, "key", 7, "daily", 5, None),  # key 7, not user 7: a key budget never replaces a default
        BudgetRule(6, "project", 2, "daily", 5, None),
        BudgetRule(7, "project", 3, "monthly", 5, None),
    ]
    assert [r.budget_id for r in applicable(rules, 7)] == [3, 2]
    assert [r.budget_id for r in applicable(rules, 8)] == [1, 2, 4]
    assert [r.budget_id for r in applicable(rules, 9)] == [1, 2]
    # Key and project budgets apply on top of the user's (or the defaults), each to its own subject only.
    assert [r.budget_id for r in applicable(rules, 9, key_id=7, project_id=2)] == [1, 2, 5, 6]
    assert [r.budget_id for r in applicable(rules, 7, key_id=8, project_id=3)] == [3, 2, 7]


def test_thresholds_are_exact_integer_comparisons():
    rule = BudgetRule(1, "user", 1, "daily", limit_nanos=1_000_000_000, warn_percent=80)
    below = BudgetState(rule, 799_999_999, None, None)
    at_warn = BudgetState(rule, 800_000_000, None, None)
    at_cap = BudgetState(rule, 1_000_000_000, None, None)
    assert (below.warning, below.exceeded) == (False, False)
    assert (at_warn.warning, at_warn.exceeded) == (True, False)
    assert (at_cap.warning, at_cap.exceeded, at_cap.remaining_nanos) == (True, True, 0)
    assert tightest([at_warn, below]) is at_warn
    assert "daily budget is $1.000000000 and $1.000000000 has been spent. It does not reset." in at_cap.refusal_message()


def test_usd_amounts_convert_exactly_or_are_refused():
    assert usd_to_nanos(Decimal("0.000000001")) == 1
    assert usd_to_nanos(Decimal("25")) == 25_000_000_000
    for bad in ("-1", "0.0000000001", "NaN", "Infinity"):
        with pytest.raises(ValueError):
            usd_to_nanos(Decimal(bad))


def run(*args):
    out = io.StringIO()
    call_command("set_budget", *args, stdout=out)
    return out.getvalue()


def test_set_budget_creates_and_updates_user_and_default_budgets(alice):
    assert "Created alice daily budget: $25.000000000, warning at 80% (active)" in run(
        "alice", "--usd", "25", "--period", "daily", "--warn-percent", "80")
    assert "Updated alice daily budget: $30.500000000 (inactive)" in run(
        "alice", "--usd", "30.5", "--period", "daily", "--inactive")
    assert "Created default monthly budget: $100.000000000 (active)" in run(
        "--default", "--usd", "100", "--period", "monthly")
    assert {(b.user_id, b.period, b.limit_nanos, b.is_active) for b in Budget.objects.all()} == {
        (alice.pk, "daily", 30_500_000_000, False), (None, "monthly", 100_000_000_000, True)}


@pytest.mark.parametrize(
    "args, message",
    [
        (["ghost", "--usd", "1", "--period", "daily"], "No user named 'ghost'"),
        (["alice", "--usd", "ten", "--period", "daily"], "not a number"),
        (["alice", "--usd", "-5", "--period", "daily"], "zero or more"),
        (["alice", "--usd", "5", "--period", "daily", "--warn-percent", "150"], "1 to 100"),
        (["alice", "--usd", "5", "--period", "yearly"], "invalid choice"),
        (["alice", "--default", "--usd", "5", "--period", "daily"], "not allowed with"),
    ],
)
def test_set_budget_refuses_bad_input(alice, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Budget.objects.exists()
