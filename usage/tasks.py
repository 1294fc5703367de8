"""Scheduled work (django-q2), declared here and synced by `manage.py setup_schedules` and after
every `migrate` (usage.apps), so a fresh deployment has its schedules without a further step.

Buffer draining is not scheduled: buffers are per host and a schedule runs on whichever cluster
takes it, so every gateway process drains its own host's buffer (usage.store).
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django_q.models import Schedule

from usage.budgets import alerts
from usage.degraded import drain
from usage import rollups

PREFIX = "codevector:"

# name -> (function path, schedule type, minutes between runs)
SCHEDULES = {
    f"{PREFIX}rollup-usage": ("usage.tasks.roll_up_usage", "I", 1),
    f"{PREFIX}usage-retention": ("usage.tasks.apply_retention", "D", None),
    # Budget alerts are decided and their outbox swept every minute; a delivery's retries are the
    # outbox's own (USAGE_ALERT_RETRY_SECONDS), not django-q2's redelivery of a failed task.
    f"{PREFIX}budget-alerts": ("usage.tasks.send_budget_alerts", "I", 1),
}


def roll_up_usage() -> str:
    return rollups.roll_up().line()


def apply_retention() -> str:
    pruned = rollups.prune()
    applied = drain.prune_applied_ids(timezone.now() - timedelta(days=settings.USAGE_APPLIED_IDS_DAYS))
    return (f"Pruned {pruned.five_minute_rows} 5-minute row(s), {pruned.hour_rows} hour row(s), "
            f"{applied} applied delta id(s).")


def send_budget_alerts() -> str:
    try:
        decided = len(alerts.decide())
    finally:  # what was decided before goes out even when deciding fails this time
        swept = alerts.sweep()
    return f"Decided {decided} budget alert(s); {swept.sent} delivery(ies) sent, {swept.failed} failed."


def sync_schedules(using: str = "default") -> tuple[list[str], list[str], list[str]]:
    """Create or update our schedules by name; remove ours that are no longer declared. Schedules
    outside our prefix (made by hand) are left alone. Returns (created, updated, removed)."""
    created, updated = [], []
    schedules = Schedule.objects.using(using)
    for name, (func, schedule_type, minutes) in SCHEDULES.items():
        wanted = {"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1}
        schedule = schedules.filter(name=name).first()
        if schedule is None:
            schedules.create(name=name, **wanted)
            created.append(name)
        elif any(getattr(schedule, field) != value for field, value in wanted.items()):
            for field, value in wanted.items():
                setattr(schedule, field, value)
            schedule.save(using=using)
            updated.append(name)
    stale = schedules.filter(name__startswith=PREFIX).exclude(name__in=SCHEDULES)
    removed = list(stale.values_list("name", flat=True))
    stale.delete()
    return created, updated, removed
