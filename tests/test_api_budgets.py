"""/api/budgets/ (staff with usage.view_usage_dashboard reads; writes need the budget permissions)
and /api/me/budgets/ (key holders)."""

import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.models import ApiKey
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import Budget


@pytest.fixture
def staff(db):
    """Sam manages budgets: the dashboard permission and the budget model's own."""
    user = User.objects.create_user("sam", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_usage_dashboard", "add_budget", "change_budget", "delete_budget"]))
    return user


@pytest.fixture
def viewer(db):
    """Vic only views usage (usage.view_usage_dashboard), by an API key of his own."""
    user = User.objects.create_user("vic", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usage_dashboard"))
    return user


def test_a_viewer_reads_budgets_but_cannot_create_change_or_delete_one(viewer, alice):
    """Catches budget writes guarded by the view permission alone (issue #27: a $1,000,000 budget
    was created and the default switched off with a view-only key)."""
    default, _ = set_budget(username=None, period="monthly", amount_usd=Decimal(10), warn_percent=None, active=True)
    _, raw = ApiKey.objects.create_key(viewer)
    api = client_for(key=raw)
    before = list(Budget.objects.order_by("id").values())
    assert api.get("/api/budgets/").status_code == 200
    assert api.get(f"/api/budgets/{default.pk}/").status_code == 200
    created = api.post("/api/budgets/", {"user": alice.pk, "period": "daily", "limit_usd": "1000000"}, format="json")
    changed = api.patch(f"/api/budgets/{default.pk}/", {"is_active": False}, format="json")
    replaced = api.put(f"/api/budgets/{default.pk}/", {"period": "monthly", "limit_usd": "1000000"}, format="json")
    deleted = api.delete(f"/api/budgets/{default.pk}/")
    assert [created.status_code, changed.status_code, replaced.status_code, deleted.status_code] == [403] * 4
    assert "usage.add_budget" in created.data["detail"]
    assert list(Budget.objects.order_by("id").values()) == before


def test_a_budget_manager_deletes_a_budget(staff, alice):
    budget, _ = set_budget(username="alice", period="daily", amount_usd=Decimal(2), warn_percent=None, active=True)
    assert client_for(staff).delete(f"/api/budgets/{budget.pk}/").status_code == 204
    assert not Budget.objects.filter(pk=budget.pk).exists()


def client_for(user=None, key=None):
    client = APIClient()
    if user:
        client.force_authenticate(user)
    if key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def spend(user, facade, nanos):
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk, at=timezone.now(),
                            cost_nanos=nanos)])


def test_staff_create_list_and_change_budgets(staff, alice, gpt):
    api = client_for(staff)
    created = api.post("/api/budgets/", {"user": alice.pk, "period": "daily", "limit_usd": "2.5",
                                         "warn_percent": 80}, format="json")
    assert created.status_code == 201, created.data
    default = api.post("/api/budgets/", {"user": None, "period": "monthly", "limit_usd": "100"}, format="json")
    assert default.status_code == 201
    spend(alice, gpt, 1_000_000_001)
    listing = api.get("/api/budgets/").json()
    assert [(b["username"], b["period"], b["limit_usd"]) for b in listing] == [
        ("alice", "daily", "2.500000000"), (None, "monthly", "100.000000000")]
    assert listing[0]["state"]["spend_usd"] == "1.000000001" and listing[0]["state"]["remaining_usd"] == "1.499999999"
    assert listing[1]["state"] is None
    changed = api.patch(f"/api/budgets/{created.json()['id']}/", {"limit_usd": "3", "is_active": False}, format="json")
    assert changed.status_code == 200 and changed.json()["limit_usd"] == "3.000000000"
    assert Budget.objects.get(user=alice).limit_nanos == 3_000_000_000


@pytest.mark.parametrize("body, field", [
    ({"period": "yearly", "limit_usd": "1"}, "period"),
    ({"period": "daily", "limit_usd": "-1"}, "limit_usd"),
    ({"period": "daily", "limit_usd": "0.0000000001"}, "limit_usd"),
    ({"period": "daily", "limit_usd": "1", "warn_percent": 0}, "warn_percent"),
])
def test_bad_budgets_get_drf_errors(staff, body, field):
    response = client_for(staff).post("/api/budgets/", body, format="json")
    assert response.status_code == 400 and field in response.json()


def test_a_second_budget_for_the_same_user_and_period_is_refused(staff, alice):
    set_budget(username="alice", period="weekly", amount_usd=Decimal(1), warn_percent=None, active=True)
    response = client_for(staff).post("/api/budgets/", {"user": alice.pk, "period": "weekly", "limit_usd": "2"},
                                      format="json")
    assert response.status_code == 400 and "already has a weekly budget" in str(response.json())


def test_only_staff_with_the_permission_manage_budgets(alice, db):
    plain_staff = User.objects.create_user("pat", is_staff=True)
    for user in (alice, plain_staff):
        assert client_for(user).get("/api/budgets/").status_code == 403
    assert APIClient().get("/api/budgets/").status_code in (401, 403)


def test_key_holders_read_their_own_applicable_budgets(alice, gpt):
    _, key = ApiKey.objects.create_key(alice)
    set_budget(username="alice", period="daily", amount_usd=Decimal(5), warn_percent=10, active=True)
    set_budget(username=None, period="total", amount_usd=Decimal(50), warn_percent=None, active=True)
    set_budget(username=None, period="daily", amount_usd=Decimal(1), warn_percent=None, active=True)  # alice has her own
    spend(alice, gpt, 600_000_000)
    response = client_for(key=key).get("/api/me/budgets/")
    assert response.status_code == 200
    rows = response.json()
    assert [(r["period"], r["limit_usd"], r["spend_usd"], r["remaining_usd"], r["warning"], r["is_default"])
            for r in rows] == [("daily", "5.000000000", "0.600000000", "4.400000000", True, False),
                               ("total", "50.000000000", "0.600000000", "49.400000000", False, True)]
    assert rows[0]["resets_at"] and rows[1]["resets_at"] is None and rows[0]["warn_percent"] == 10
    assert client_for(key=key).get("/api/budgets/").status_code == 403


def test_revoked_and_unknown_keys_are_refused(alice):
    key_obj, key = ApiKey.objects.create_key(alice)
    key_obj.revoked_at = timezone.now()
    key_obj.save()
    assert client_for(key=key).get("/api/me/budgets/").status_code == 401
    assert client_for(key="cvk_unknown").get("/api/me/budgets/").status_code == 401
