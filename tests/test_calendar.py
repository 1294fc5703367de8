"""usage.calendar: local hour, day and month boundaries, exact across DST and half-hour zones."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from usage.calendar import as_utc, day_bounds, hour_start, month_bounds, next_hour

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

NY, KOLKATA, KATHMANDU = ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata"), ZoneInfo("Asia/Kathmandu")


def hours_of_local_day(day_start, day_end, tz):
    hours, t = [], day_start
    while t < day_end:
        hours.append(t)
        t = next_hour(t, tz)
    assert t == day_end
    return hours


@pytest.mark.parametrize("when, hours", [
    (datetime(2026, 3, 8, 12, tzinfo=UTC), 23),  # spring forward
    (datetime(2026, 11, 1, 12, tzinfo=UTC), 25),  # fall back: 01:00-02:00 twice
    (datetime(2026, 6, 1, 12, tzinfo=UTC), 24),
])
def test_new_york_days_have_23_24_or_25_hour_buckets(when, hours):
    start, end = day_bounds(when, NY)
    assert len(hours_of_local_day(start, end, NY)) == hours
    assert end - start == timedelta(hours=hours)


def test_the_repeated_autumn_hour_is_two_buckets():
    first = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # 01:00 EDT
    second = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)  # 01:00 EST
    assert hour_start(first + timedelta(minutes=30), NY) == first
    assert hour_start(second + timedelta(minutes=30), NY) == second
    assert next_hour(first, NY) == second


@pytest.mark.parametrize("tz, utc_minute", [(KOLKATA, 30), (KATHMANDU, 15), (ZoneInfo("UTC"), 0)])
def test_hours_start_on_local_boundaries_in_offset_zones(tz, utc_minute):
    instant = datetime(2026, 1, 10, 7, 50, tzinfo=UTC)
    start = hour_start(instant, tz)
    assert start.minute == utc_minute and start <= instant < next_hour(start, tz)
    assert start.astimezone(tz).minute == 0


def test_days_and_months_start_at_local_midnight():
    assert day_bounds(datetime(2026, 1, 1, 18, 29, tzinfo=UTC), KOLKATA) == (
        datetime(2025, 12, 31, 18, 30, tzinfo=UTC), datetime(2026, 1, 1, 18, 30, tzinfo=UTC))
    assert month_bounds(datetime(2026, 2, 28, 18, 15, tzinfo=UTC), KATHMANDU) == (
        datetime(2026, 2, 28, 18, 15, tzinfo=UTC), datetime(2026, 3, 31, 18, 15, tzinfo=UTC))
    assert month_bounds(datetime(2026, 11, 15, tzinfo=UTC), NY) == (
        datetime(2026, 11, 1, 4, 0, tzinfo=UTC), datetime(2026, 12, 1, 5, 0, tzinfo=UTC))


def test_raw_query_datetimes_become_aware_utc():
    assert as_utc("2026-01-02 03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert as_utc(datetime(2026, 1, 2, 3, 4, 5)) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert as_utc(None) is None
