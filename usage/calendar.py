"""Calendar arithmetic for buckets, windows and budget periods, in settings.TIME_ZONE, DST-exact.

Every boundary is an aware instant. Five-minute buckets divide every real UTC offset, so they are
local boundaries everywhere; hours, days and months start on local boundaries: a 23- or 25-hour
day around DST, a repeated autumn hour as two hour buckets, +5:30 and +5:45 zones included.
"""

import functools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

HOUR = timedelta(hours=1)


def zone() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def local_midnight(day: date, tz: ZoneInfo | None = None) -> datetime:
    """The first instant of a local day (a DST change at midnight moves it, never skips it)."""
    aware = datetime.combine(day, time()).replace(tzinfo=tz or zone())
    return aware.astimezone(UTC)


def local_date(instant: datetime, tz: ZoneInfo | None = None) -> date:
    return instant.astimezone(tz or zone()).date()


def hour_start(instant: datetime, tz: ZoneInfo | None = None) -> datetime:
    """The start of the local hour holding `instant` (in UTC)."""
    local = instant.astimezone(tz or zone())
    return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def next_hour(boundary: datetime, tz: ZoneInfo | None = None) -> datetime:
    """The local hour boundary after `boundary` (itself a local hour boundary)."""
    tz = tz or zone()
    candidate = hour_start(boundary + HOUR, tz)
    while candidate <= boundary:  # an offset change of less than an hour
        candidate = hour_start(candidate + HOUR, tz)
    return candidate


def day_bounds(instant: datetime, tz: ZoneInfo | None = None) -> tuple[datetime, datetime]:
    return _day_bounds(instant, tz or zone())


def month_bounds(instant: datetime, tz: ZoneInfo | None = None) -> tuple[datetime, datetime]:
    return _month_bounds(instant, tz or zone())


# Remembered by (instant, zone): the reads split every window into the same days and months again
# for each of their parts, several times per page (usage.reads.engine.segments), and the zone
# arithmetic of a long window's days adds up. The zone is part of the key, never the setting.
@functools.lru_cache(maxsize=8192)
def _day_bounds(instant: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    day = local_date(instant, tz)
    return local_midnight(day, tz), local_midnight(day + timedelta(days=1), tz)


@functools.lru_cache(maxsize=8192)
def _month_bounds(instant: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    first = local_date(instant, tz).replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return local_midnight(first, tz), local_midnight(following, tz)


def as_utc(value) -> datetime | None:
    """A datetime from a raw query: aware on PostgreSQL, naive UTC text or datetime on SQLite."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
