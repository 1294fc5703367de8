"""usage.budgets.alerts.decide: a budget threshold is decided once per budget, subject and period, when the
period's spend reaches it (integer arithmetic), with its outbox rows in the same transaction; a
database outage delays the decision and never loses or duplicates it. The schedule that runs it
exists after `migrate` alone. (Delivery: tests/test_alerts_delivery.py.)"""

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django_q.models import Schedule

from gateway.models import ApiKey, Project
from tests.support.pg_proxy import PgProxy
from tests.support.servers import ROOT
from usage.budgets import alerts
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import AlertDelivery, Budget, BudgetAlert

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
USD = 10**9


def spend(user, facade, nanos, at=T0, key=None):
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, key_id=key.pk if key else None,
                            facade_id=facade.pk, at=at, cost_nanos=nanos)])


def decided(now=T0 + timedelta(minutes=1)):
    return [(a.subject, a.threshold_percent, a.spend_nanos, a.limit_nanos) for a in alerts.decide(now)]


def destinations_of(alert):
    return sorted(alert.deliveries.values_list("channel", "target"))


def test_each_threshold_is_decided_once_when_the_spend_reaches_it_in_integers(alice, gpt):
    """Catches: `>` for `>=` (50% at exactly $1 of $2 missed); a rounded percentage (BudgetState's
    percent_used says 80.0 at $1.599999999); a threshold decided again in the same period."""
    set_budget(username="alice", period="total", amount_usd=Decimal(2), warn_percent=None, active=True,
               alert_percents=[80, 50])
    spend(alice, gpt, 999_999_999)
    assert decided() == []
    spend(alice, gpt, 1)
    assert decided() == [("alice", 50, 1_000_000_000, 2_000_000_000)]
    assert decided() == [] and decided(T0 + timedelta(days=400)) == []
    spend(alice, gpt, 599_999_999)
    assert decided() == []
    spend(alice, gpt, 1)
    assert decided() == [("alice", 80, 1_600_000_000, 2_000_000_000)]
    rows = list(BudgetAlert.objects.order_by("threshold_percent").values_list(
        "scope", "subject", "subject_pk", "period", "period_key", "period_start", "threshold_percent"))
    assert rows == [("user", "alice", alice.pk, "total", "total", None, 50),
                    ("user", "alice", alice.pk, "total", "total", None, 80)]
    assert [destinations_of(a) for a in BudgetAlert.objects.order_by("threshold_percent")] == \
        [[("email", "alice@example.com")]] * 2
    assert set(AlertDelivery.objects.values_list("status", "attempts")) == {("pending", 0)}


def test_a_budget_created_or_lowered_past_its_thresholds_alerts_at_once(alice, gpt):
    """Catches: alerts only on a crossing seen between two decisions (a budget made after the spend
    would never alert), or only the highest threshold of a jump."""
    spend(alice, gpt, 1_700_000_000)
    set_budget(username="alice", period="total", amount_usd=Decimal(2), warn_percent=None, active=True,
               alert_percents=[50, 80, 100])
    assert decided() == [("alice", 50, 1_700_000_000, 2_000_000_000), ("alice", 80, 1_700_000_000, 2_000_000_000)]
    set_budget(username="alice", period="total", amount_usd=Decimal("1.5"), warn_percent=None, active=True)
    assert decided() == [("alice", 100, 1_700_000_000, 1_500_000_000)]
    set_budget(username="alice", period="total", amount_usd=Decimal(100), warn_percent=None, active=True)
    set_budget(username="alice", period="total", amount_usd=Decimal(2), warn_percent=None, active=True)
    assert decided() == []  # raised and lowered again within the period: nothing is decided twice


def test_a_default_budget_alerts_each_user_alone_and_not_those_with_their_own(alice, bob, gpt):
    carol = User.objects.create_user("carol", "carol@example.com")
    set_budget(period="daily", amount_usd=Decimal(1), warn_percent=None, active=True, alert_percents=[50])
    set_budget(username="carol", period="daily", amount_usd=Decimal(10), warn_percent=None, active=True)
    spend(alice, gpt, 600_000_000)
    spend(bob, gpt, 200_000_000)
    spend(carol, gpt, 700_000_000)  # her own budget replaces the default for her
    assert decided() == [("alice", 50, 600_000_000, 1_000_000_000)]
    alert = BudgetAlert.objects.get()
    assert (alert.scope, alert.subject_pk, alert.period_start, alert.period_key) == \
        ("default", alice.pk, datetime(2026, 7, 1, tzinfo=UTC), "2026-07-01T00:00:00+00:00")
    assert destinations_of(alert) == [("email", "alice@example.com")]
    spend(bob, gpt, 300_000_000)
    assert decided() == [("bob", 50, 500_000_000, 1_000_000_000)]
    Budget.objects.filter(scope="user").update(is_active=False)  # an inactive own budget: the default applies
    assert decided() == [("carol", 50, 700_000_000, 1_000_000_000)]


def test_a_new_period_alerts_again_and_the_last_one_stays_decided(alice, gpt):
    set_budget(username="alice", period="daily", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 500_000_000, at=T0)
    assert decided(T0 + timedelta(hours=1)) == [("alice", 50, 500_000_000, 1_000_000_000)]
    day2 = T0 + timedelta(days=1)
    assert decided(day2) == []  # a new day: nothing spent in it yet
    spend(alice, gpt, 499_999_999, at=day2)
    assert decided(day2 + timedelta(hours=1)) == []
    spend(alice, gpt, 1, at=day2)
    assert decided(day2 + timedelta(hours=1)) == [("alice", 50, 500_000_000, 1_000_000_000)]
    assert decided(T0 + timedelta(hours=2)) == []  # day 1 again (a late decider): decided already
    assert list(BudgetAlert.objects.order_by("period_key").values_list("period_key", flat=True)) == \
        ["2026-07-01T00:00:00+00:00", "2026-07-02T00:00:00+00:00"]


def test_project_and_key_alerts_go_to_owners_users_the_list_and_both_webhooks(alice, bob, gpt, settings):
    """Catches: a project alert mailed to its members, a key alert missing its project's webhook, an
    address listed twice (USAGE_ALERT_EMAILS naming an owner again)."""
    settings.USAGE_ALERT_EMAILS = ["ops@example.com", "ALICE@example.com"]
    settings.USAGE_ALERT_WEBHOOK_URL = "http://127.0.0.1:9/global"
    olga = User.objects.create_user("olga", "olga@example.com")
    atlas = Project.objects.create_project("Atlas", owners=[alice, olga], members=[bob])
    Project.objects.filter(pk=atlas.pk).update(alert_webhook_url="http://127.0.0.1:9/atlas",
                                               alert_webhook_secret="atlas-secret")
    key, _ = ApiKey.objects.create_key(bob, project=atlas)
    set_budget(project_id=atlas.public_id, period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    set_budget(key_prefix=key.prefix, period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(bob, gpt, 500_000_000, key=key)
    assert sorted(decided()) == sorted([(atlas.public_id, 50, 500_000_000, USD), (key.prefix, 50, 500_000_000, USD)])
    by_scope = {a.scope: a for a in BudgetAlert.objects.all()}
    assert destinations_of(by_scope["project"]) == [
        ("email", "alice@example.com"), ("email", "olga@example.com"), ("email", "ops@example.com"),
        ("webhook", "http://127.0.0.1:9/atlas"), ("webhook", "http://127.0.0.1:9/global")]
    assert destinations_of(by_scope["key"]) == [
        ("email", "ALICE@example.com"), ("email", "bob@example.com"), ("email", "ops@example.com"),
        ("webhook", "http://127.0.0.1:9/atlas"), ("webhook", "http://127.0.0.1:9/global")]
    assert by_scope["project"].deliveries.get(target__endswith="/atlas").project_id == atlas.pk
    assert by_scope["project"].deliveries.get(target__endswith="/global").project_id is None


def test_inactive_budgets_and_budgets_without_thresholds_alert_nothing(alice, bob, gpt):
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=80, active=True)
    set_budget(username="bob", period="total", amount_usd=Decimal(1), warn_percent=None, active=False,
               alert_percents=[50])
    spend(alice, gpt, 2 * USD)
    spend(bob, gpt, 2 * USD)
    assert decided() == [] and BudgetAlert.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_deciders_racing_decide_a_threshold_once(alice, gpt):
    """Both see the threshold due, then both insert: the unique constraint lets one through and the
    other finds it decided. Catches: no unique constraint (two alerts), or the loser raising."""
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, USD)
    now = T0 + timedelta(minutes=1)
    seen = threading.Barrier(2)
    results, errors = [], []

    def decider():
        try:
            due = alerts.crossings(list(Budget.objects.select_related("user")), None, now)
            seen.wait(10)
            results.append([alerts.record(c, now) for c in due])
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=decider) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(len([a for a in r if a is not None]) for r in results) == [0, 1]
    assert BudgetAlert.objects.count() == 1 and AlertDelivery.objects.count() == 1


def run_python(code: str, database_url: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import django; django.setup()\n" + code], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DATABASE_URL": database_url}, **kwargs)


DECIDE = "from usage.budgets.alerts import decide\nprint(len(decide()))"
# Reads first, then a line on stdin, then the inserts: the proxy's mode applies to the alert's COMMIT
# (decide() as a whole would meet it at a read's COMMIT first).
DECIDE_IN_TWO_STEPS = """
import sys
from django.utils import timezone
from usage.budgets import alerts
from usage.models import Budget
now = timezone.now()
due = alerts.crossings(list(Budget.objects.select_related("user")), None, now)
print(len(due), flush=True)
sys.stdin.readline()
print(sum(alerts.record(crossing, now) is not None for crossing in due), flush=True)
"""


def decide_through(proxy, mode: str, database_url: str) -> tuple[int, str, str]:
    """Run a decider that reads with the database up and records with the proxy in `mode`."""
    process = run_python(DECIDE_IN_TWO_STEPS, database_url)
    assert process.stdout.readline().strip() == "1"
    proxy.set_mode(mode)
    out, err = process.communicate("go\n", timeout=60)
    return process.returncode, out, err


@pytest.mark.postgres_only
def test_a_database_outage_delays_the_decision_and_never_loses_or_duplicates_it(test_database_url, alice, gpt):
    """A decider whose database is down, whose alert's COMMIT is dropped (it did not land) or whose
    COMMIT's answer is cut (it landed, the decider cannot know) fails; the next decision decides
    each threshold exactly once. Catches: an outbox written outside the alert's transaction (a
    dropped COMMIT would leave deliveries, or an alert without them), or a retry deciding again."""
    proxy = PgProxy(connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
    proxied_url = test_database_url.replace(f":{connection.settings_dict['PORT'] or 5432}/", f":{proxy.port}/")
    try:
        set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
                   alert_percents=[50, 80])
        spend(alice, gpt, 500_000_000, at=datetime.now(UTC))
        proxy.set_mode("down")
        out, err = run_python(DECIDE, proxied_url).communicate(timeout=60)
        assert "OperationalError" in err and out == ""
        assert (BudgetAlert.objects.count(), AlertDelivery.objects.count()) == (0, 0)
        proxy.set_mode("up")

        returncode, out, err = decide_through(proxy, "drop_commit", proxied_url)
        assert returncode != 0 and "OperationalError" in err and proxy.cuts == 1
        assert (BudgetAlert.objects.count(), AlertDelivery.objects.count()) == (0, 0)
        assert [a.threshold_percent for a in alerts.decide()] == [50]  # the database answers again

        spend(alice, gpt, 300_000_000, at=datetime.now(UTC))
        returncode, out, err = decide_through(proxy, "cut_after_commit", proxied_url)
        assert returncode != 0 and "OperationalError" in err and proxy.cuts == 2
        assert alerts.decide() == []  # the 80% alert landed before the cut: not decided again
        assert sorted(BudgetAlert.objects.values_list("threshold_percent", "spend_nanos")) == \
            [(50, 500_000_000), (80, 800_000_000)]
        assert sorted(AlertDelivery.objects.values_list("alert__threshold_percent", "target")) == \
            [(50, "alice@example.com"), (80, "alice@example.com")]
    finally:
        proxy.close()


def test_the_alert_schedule_exists_after_migrate_alone(db):
    """Catches: the schedule made only by setup_schedules (a deployment that runs `migrate` alone
    would never alert)."""
    Schedule.objects.all().delete()
    call_command("migrate", verbosity=0)
    assert list(Schedule.objects.filter(name="codevector:budget-alerts").values_list(
        "func", "schedule_type", "minutes", "repeats")) == [("usage.tasks.send_budget_alerts", "I", 1, -1)]


def test_the_scheduled_task_decides_and_sends(alice, gpt):
    from usage.tasks import send_budget_alerts

    set_budget(username="alice", period="monthly", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 750_000_000, at=datetime.now(UTC))
    assert send_budget_alerts() == "Decided 1 budget alert(s); 1 delivery(ies) sent, 0 failed."
    assert send_budget_alerts() == "Decided 0 budget alert(s); 0 delivery(ies) sent, 0 failed."
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "$0.750000000" in mail.outbox[0].body and "$1.000000000" in mail.outbox[0].body
