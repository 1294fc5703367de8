"""Budget periods: calendar days, weeks (from Monday) and months in settings.TIME_ZONE, or no period at
all (`total`)."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from usage.calendar import day_bounds, local_date, local_midnight, month_bounds, zone
from usage.models import Budget

BUDGET_PERIODS = [p.value for p in Budget.Period]


def budget_period_bounds(period: str, now: datetime, tz: ZoneInfo | None = None) -> tuple[datetime | None, datetime | None]:
    """(start, reset) of the budget period holding `now`; (None, None) for `total`."""
    tz = tz or zone()
    if period == Budget.Period.DAILY:
        return day_bounds(now, tz)
    if period == Budget.Period.WEEKLY:
        today = local_date(now, tz)
        monday = today - timedelta(days=today.weekday())
        return local_midnight(monday, tz), local_midnight(monday + timedelta(days=7), tz)
    if period == Budget.Period.MONTHLY:
        return month_bounds(now, tz)
    if period == Budget.Period.TOTAL:
        return None, None
    raise ValueError(f"unknown budget period {period!r}")
