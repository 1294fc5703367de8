"""usage.tasks and manage.py setup_schedules / rollup_usage."""

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Schedule

from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import AppliedDelta, DailyUsage


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_setup_schedules_twice_leaves_the_same_schedules_and_keeps_hand_made_ones(db):
    Schedule.objects.all().delete()  # `migrate` made ours (usage.apps): start from none
    Schedule.objects.create(name="someone-elses", func="math.floor", schedule_type="D")
    Schedule.objects.create(name="codevector:retired-task", func="usage.tasks.nothing", schedule_type="D")
    assert "3 created, 0 updated, 1 removed" in run("setup_schedules")
    first = sorted(Schedule.objects.values_list("name", "func", "schedule_type", "minutes"))
    assert "0 created, 0 updated, 0 removed" in run("setup_schedules")
    assert sorted(Schedule.objects.values_list("name", "func", "schedule_type", "minutes")) == first
    assert first == [("codevector:budget-alerts", "usage.tasks.send_budget_alerts", "I", 1),
                     ("codevector:rollup-usage", "usage.tasks.roll_up_usage", "I", 1),
                     ("codevector:usage-retention", "usage.tasks.apply_retention", "D", None),
                     ("someone-elses", "math.floor", "D", None)]
    Schedule.objects.filter(name="codevector:rollup-usage").update(minutes=5)
    assert "0 created, 1 updated, 0 removed" in run("setup_schedules")


def test_rollup_usage_prints_its_summary(alice, gpt):
    now = timezone.now()
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, facade_id=gpt.pk, at=now - timedelta(days=2),
                            input_tokens=5)])
    out = run("rollup_usage")
    assert out.strip().splitlines()[-1].startswith("Rolled ") and "day(s)" in out and "complete through" in out
    assert DailyUsage.objects.get().input_tokens == 5
    assert "Rolled 0 hour(s), 0 day(s), 0 month(s)" in run("rollup_usage")


def test_rollup_usage_refuses_a_rebuild_past_retention_and_bad_times(db, settings):
    settings.USAGE_5MIN_RETENTION_DAYS = 3
    with pytest.raises(CommandError, match="may already be pruned"):
        run("rollup_usage", "--rebuild", "--since", (timezone.now() - timedelta(days=10)).date().isoformat())
    with pytest.raises(CommandError, match="needs --since"):
        run("rollup_usage", "--rebuild")
    with pytest.raises(CommandError, match="is not a time"):
        run("rollup_usage", "--until", "yesterday-ish")


def test_retention_task_prunes_old_applied_ids_and_rolled_rows(alice, gpt, settings):
    from usage.tasks import apply_retention

    settings.USAGE_APPLIED_IDS_DAYS = 30
    AppliedDelta.objects.create(delta_id="old", applied_at=timezone.now() - timedelta(days=31))
    AppliedDelta.objects.create(delta_id="new", applied_at=timezone.now() - timedelta(days=29))
    assert "1 applied delta id(s)" in apply_retention()
    assert list(AppliedDelta.objects.values_list("delta_id", flat=True)) == ["new"]
