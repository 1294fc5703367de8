"""Budgets in the admin: created in USD, listed with this period's spend, progress and reset."""

import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

import usage.web.admin_budgets  # noqa: F401  (registers the budget admin)
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import Budget


@pytest.fixture
def root_client(client, db):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_a_budget_is_created_in_usd_and_stored_in_nanodollars(root_client, alice):
    response = root_client.post("/admin/usage/budget/add/", {
        "user": alice.pk, "period": "monthly", "limit_usd": "12.345678901", "warn_percent": "75", "is_active": "on"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    budget = Budget.objects.get()
    assert (budget.user, budget.period, budget.limit_nanos, budget.warn_percent) == (alice, "monthly", 12_345_678_901, 75)


def test_a_duplicate_budget_is_refused(root_client, alice):
    set_budget(username="alice", period="daily", amount_usd=Decimal(1), warn_percent=None, active=True)
    response = root_client.post("/admin/usage/budget/add/", {
        "user": alice.pk, "period": "daily", "limit_usd": "2", "is_active": "on"})
    assert response.status_code == 200 and "already a budget" in response.content.decode()
    assert Budget.objects.count() == 1


def test_the_list_shows_spend_progress_reset_and_warning(root_client, alice, gpt):
    set_budget(username="alice", period="daily", amount_usd=Decimal(2), warn_percent=50, active=True)
    set_budget(username=None, period="total", amount_usd=Decimal(100), warn_percent=None, active=True)
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, facade_id=gpt.pk, at=timezone.now(),
                            cost_nanos=1_500_000_000)])
    page = root_client.get("/admin/usage/budget/").content.decode()
    assert "$1.50" in page and 'value="75.0"' in page and ">warning<" in page
    assert "default (every user without their own)" in page and ">never<" in page
    detail = root_client.get(f"/admin/usage/budget/{Budget.objects.get(user=alice).pk}/change/").content.decode()
    assert "$1.50 spent of $2.00 (75.0%), $0.50 remaining" in detail
    assert 'value="2.000000000"' in detail
