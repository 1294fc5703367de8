"""Exact spend since a moment, per user, key or project: what the budgets compare with their caps
(usage.budgets.book) and the demo shows. Read through usage.reads.engine, as every other read."""

from datetime import datetime

from usage.calendar import month_bounds, zone
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.reads.engine import key_model, sums
from usage.rollups import watermark


def _since_the_beginning() -> datetime | None:
    """The start of the month of the oldest usage row, at any level (None: no usage at all)."""
    earliest = [m.objects.order_by("bucket_start").values_list("bucket_start", flat=True).first()
                for m in (MonthlyUsage, DailyUsage, HourlyUsage, FiveMinuteUsage)]
    known = [e for e in earliest if e is not None]
    return month_bounds(min(known), zone())[0] if known else None


def spend_by_user(start: datetime | None, end: datetime, user_ids: set[int] | None = None) -> dict[int, int]:
    """Each user's exact spend in nanodollars over [start, end) (start None: since the beginning)."""
    if start is None and (start := _since_the_beginning()) is None:
        return {}
    if user_ids is not None and not user_ids:
        return {}
    return {row["user_id"]: int(row["cost_nanos"] or 0)
            for row in sums([(start, end)], ("user_id",), watermark(), user_ids=user_ids)}


def spend_by_key(start: datetime | None, end: datetime, key_ids: set[int]) -> dict[int, int]:
    """Each of these keys' exact spend over [start, end) (start None: since the beginning); read
    through their owners' rows (the per-user index), then picked."""
    if not key_ids or (start is None and (start := _since_the_beginning()) is None):
        return {}
    owners = set(key_model().objects.filter(pk__in=key_ids).values_list("user_id", flat=True))
    if not owners:
        return {}
    return {row["key_id"]: int(row["cost_nanos"] or 0)
            for row in sums([(start, end)], ("key_id",), watermark(), user_ids=owners) if row["key_id"] in key_ids}


def spend_by_project(start: datetime | None, end: datetime, project_ids: set[int]) -> dict[int, int]:
    """Each of these projects' exact spend over [start, end): its keys' (start None: since the beginning)."""
    if not project_ids or (start is None and (start := _since_the_beginning()) is None):
        return {}
    rolled = watermark()
    return {pid: sum(int(row["cost_nanos"] or 0) for row in sums([(start, end)], (), rolled, project_id=pid))
            for pid in sorted(project_ids)}
