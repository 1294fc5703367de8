"""Rollups: roll closed local hours, days and months forward from the watermark.

Each step rolls one local hour [W, next hour) from the 5-minute table into the hour table, the
day that hour completes (if any) from the hour table into the day table, and likewise the month,
then advances the watermark, all in one transaction under the watermark's lock (on PostgreSQL an
advisory lock held exclusively, which waits for every ledger write holding it shared:
usage.sql.WATERMARK_LOCK_KEY). Each recomputation is idempotent
(`SET x = EXCLUDED.x`), so a rerun or a crash mid-run is harmless; late data that arrives after a
period was rolled is added to it by the ledger itself (usage.ledger.plan.WritePlan.late).

Retention prunes 5-minute rows once they are behind the watermark (so in the hour table) and
older than USAGE_5MIN_RETENTION_DAYS, and hour rows once their day is rolled and they are older
than USAGE_HOUR_RETENTION_DAYS. Day and month rows are kept.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from usage import sql
from usage.counters import COUNTERS
from usage.degraded.deadletter import refuse_rollup
from usage.models import BIGINT_MAX
from usage.calendar import as_utc, day_bounds, hour_start, month_bounds, next_hour, zone


class RebuildRefused(ValueError):
    """A rebuild would need 5-minute rows that retention has already pruned."""


@dataclass
class RollupSummary:
    hours: int = 0
    days: int = 0
    months: int = 0
    rows: int = 0
    seconds: float = 0.0
    watermark: datetime | None = None
    periods: list = field(default_factory=list, repr=False)

    def line(self) -> str:
        through = timezone.localtime(self.watermark).isoformat() if self.watermark else "nothing yet"
        return (f"Rolled {self.hours} hour(s), {self.days} day(s), {self.months} month(s); {self.rows} row(s) "
                f"written in {self.seconds:.2f} s; complete through {through}.")


def _execute(cursor, statement: str, params: list) -> int:
    adapt = connection.ops.adapt_datetimefield_value
    cursor.execute(statement, [adapt(p) if isinstance(p, datetime) else p for p in params])
    return max(cursor.rowcount, 0)


def _lock_state(cursor) -> tuple[datetime | None, str]:
    exclude_writers = sql.EXCLUDE_WATERMARK_WRITERS[connection.vendor]
    if exclude_writers:
        cursor.execute(exclude_writers)
    cursor.execute(sql.LOCK_WATERMARK_FOR_ROLLUP[connection.vendor])
    row = cursor.fetchone()
    return as_utc(row[0]), row[1]


def ensure_state() -> None:
    with connection.cursor() as cursor:
        _execute(cursor, sql.ENSURE_STATE, [settings.TIME_ZONE, timezone.now()])


def watermark() -> datetime | None:
    with connection.cursor() as cursor:
        cursor.execute(sql.READ_WATERMARK)
        row = cursor.fetchone()
    return as_utc(row[0]) if row else None


def target_for(now: datetime | None = None) -> datetime:
    """The latest local hour boundary that every in-flight write has passed (now minus the grace)."""
    now = now or timezone.now()
    return hour_start(now - timedelta(seconds=settings.USAGE_ROLLUP_GRACE_SECONDS), zone())


def _roll(cursor, target: str, source: str, start: datetime, end: datetime) -> int:
    """Recompute `target`'s period [start, end) from `source` in one statement; if a sum would pass
    what a 64-bit counter holds (PostgreSQL refuses the value, SQLite's SUM overflows), group by
    group instead: those that fit are written, those that do not are dead-lettered, and the rollup
    goes on (a stalled watermark would leave every later period unrolled)."""
    try:
        with transaction.atomic():  # a savepoint: only this statement is undone
            return _execute(cursor, sql.roll_from(target, source), [start, start, end])
    except DatabaseError as exc:
        return _roll_by_group(cursor, target, source, start, end, exc)


def _roll_by_group(cursor, target: str, source: str, start: datetime, end: datetime, error: DatabaseError) -> int:
    sums: dict[tuple, list[int]] = {}
    _execute(cursor, sql.group_rows(source), [start, end])
    for user_id, key_id, facade_id, *values in cursor.fetchall():
        group = sums.setdefault((user_id, key_id, facade_id), [0] * len(COUNTERS))
        for i, value in enumerate(values):
            group[i] += int(value)
    fits = {group: values for group, values in sums.items() if max(values) <= BIGINT_MAX}
    if len(fits) == len(sums):
        raise error  # not a sum past 2**63: the statement's own failure (an outage, say)
    refuse_rollup([{"table": target, "bucket_start": start.isoformat(), "user_id": u, "key_id": k, "facade_id": f,
                    "reason": "a counter's sum passes 2**63 - 1",
                    **{name: str(v) for name, v in zip(COUNTERS, values, strict=True) if v > BIGINT_MAX}}
                   for (u, k, f), values in sums.items() if (u, k, f) not in fits], settings.USAGE_BUFFER_DIR)
    if fits:
        rows = [v for (u, k, f), values in fits.items() for v in (start, u, k, f, *values)]
        _execute(cursor, sql.set_counters(target, len(fits)), rows)
    return len(fits)


def _roll_hour(cursor, start: datetime, end: datetime, tz, summary: RollupSummary) -> None:
    tables = sql.LEVEL_TABLES
    summary.rows += _roll(cursor, tables["hour"], tables["5min"], start, end)
    summary.hours += 1
    day_start, day_end = day_bounds(start, tz)
    if day_end == end:
        summary.rows += _roll(cursor, tables["day"], tables["hour"], day_start, day_end)
        summary.days += 1
        month_start, month_end = month_bounds(start, tz)
        if month_end == end:
            summary.rows += _roll(cursor, tables["month"], tables["day"], month_start, month_end)
            summary.months += 1


def roll_up(until: datetime | None = None, now: datetime | None = None,
            progress: Callable[[int, int], None] | None = None) -> RollupSummary:
    """Roll every closed local hour (and the days and months they complete) up to `until`."""
    started = time.monotonic()
    tz = zone()
    summary = RollupSummary()
    target = hour_start(until, tz) if until else target_for(now)
    target = min(target, target_for(now))
    ensure_state()
    with transaction.atomic(), connection.cursor() as cursor:
        current, _ = _lock_state(cursor)
        if current is None:
            # The first run places the watermark at the hour of the oldest data (or at the target).
            cursor.execute(sql.EARLIEST_5MIN)
            earliest = as_utc(cursor.fetchone()[0])
            current = min(hour_start(earliest, tz) if earliest else target, target)
            _execute(cursor, sql.SET_WATERMARK, [current, settings.TIME_ZONE, timezone.now()])
    total = _count_hours(current, target)
    done = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            current, _ = _lock_state(cursor)
            if current >= target:
                break
            end = next_hour(current, tz)
            gap_end = _empty_until(cursor, current, target, tz)
            if gap_end > end:
                _skip_empty_hours(cursor, current, gap_end, tz, summary)
                end = gap_end
            else:
                _roll_hour(cursor, current, end, tz, summary)
            _execute(cursor, sql.SET_WATERMARK, [end, settings.TIME_ZONE, timezone.now()])
        done += 1
        if progress:
            progress(done, total)
    summary.watermark = current
    summary.seconds = time.monotonic() - started
    return summary


def _empty_until(cursor, start: datetime, target: datetime, tz) -> datetime:
    """The first local hour at or after `start` that has 5-minute rows (or `target`): the hours
    before it have nothing to roll."""
    _execute(cursor, sql.NEXT_5MIN_FROM, [start])
    following = as_utc(cursor.fetchone()[0])
    return target if following is None else min(target, hour_start(following, tz))


def _skip_empty_hours(cursor, start: datetime, end: datetime, tz, summary: RollupSummary) -> None:
    """Advance over hours without 5-minute rows. Days and months wholly inside are empty; the
    day and month holding `start` may end inside and have hour or day rows before it: roll them."""
    tables = sql.LEVEL_TABLES
    day_start, day_end = day_bounds(start, tz)
    if day_start < start and day_end <= end:
        summary.rows += _roll(cursor, tables["day"], tables["hour"], day_start, day_end)
        summary.days += 1
    month_start, month_end = month_bounds(start, tz)
    if month_start < start and month_end <= end:
        summary.rows += _roll(cursor, tables["month"], tables["day"], month_start, month_end)
        summary.months += 1


def _count_hours(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() // 3600))


def retention_horizon(now: datetime | None = None) -> datetime:
    """5-minute rows before this instant may already be pruned."""
    now = now or timezone.now()
    return now - timedelta(days=settings.USAGE_5MIN_RETENTION_DAYS)


def rebuild(since: datetime, now: datetime | None = None,
            progress: Callable[[int, int], None] | None = None) -> RollupSummary:
    """Recompute every rolled period from `since` (a local day start) to the watermark: hours
    from 5-minute rows, then days and months from them. Refused past 5-minute retention."""
    started = time.monotonic()
    tz = zone()
    day_start, _ = day_bounds(since, tz)
    since = day_start
    if since < retention_horizon(now):
        raise RebuildRefused(
            f"5-minute usage before {timezone.localtime(retention_horizon(now)):%Y-%m-%d %H:%M %Z} may already be "
            f"pruned (USAGE_5MIN_RETENTION_DAYS={settings.USAGE_5MIN_RETENTION_DAYS}); rebuild from a later time.")
    summary = RollupSummary()
    ensure_state()
    with transaction.atomic(), connection.cursor() as cursor:
        current, _ = _lock_state(cursor)
        if current is None or current <= since:
            summary.watermark = current
            return summary
        tables = sql.LEVEL_TABLES
        # Rows on boundaries of another time zone would be counted beside the new ones: clear them.
        summary.rows += _execute(cursor, sql.delete_range(tables["hour"]), [since, current])
        month_start, _ = month_bounds(since, tz)
        t, total, done = since, _count_hours(since, current), 0
        while t < current:
            end = next_hour(t, tz)
            if t == day_bounds(t, tz)[0]:
                summary.rows += _execute(cursor, sql.delete_range(tables["day"]), [t, day_bounds(t, tz)[1]])
                if t == month_bounds(t, tz)[0]:
                    summary.rows += _execute(cursor, sql.delete_range(tables["month"]), [t, month_bounds(t, tz)[1]])
            _roll_hour(cursor, t, end, tz, summary)
            t = end
            done += 1
            if progress:
                progress(done, total)
        if since > month_start and month_bounds(since, tz)[1] <= current:
            # The month holding `since` began before it: recompute it from its (kept) day rows.
            summary.rows += _roll(cursor, tables["month"], tables["day"], month_start, month_bounds(since, tz)[1])
        _execute(cursor, sql.SET_WATERMARK, [current, settings.TIME_ZONE, timezone.now()])
    summary.watermark = current
    summary.seconds = time.monotonic() - started
    return summary


@dataclass
class PruneSummary:
    five_minute_rows: int
    hour_rows: int


def prune(now: datetime | None = None) -> PruneSummary:
    """Delete what is both old enough and already in a coarser level."""
    now = now or timezone.now()
    tz = zone()
    ensure_state()
    with transaction.atomic(), connection.cursor() as cursor:
        current, _ = _lock_state(cursor)
        if current is None:
            return PruneSummary(0, 0)
        five_minute_before = min(current, retention_horizon(now))
        # Hour rows are in the day table once their whole day ends by the watermark.
        rolled_days_end = day_bounds(current, tz)[0]
        hour_before = min(rolled_days_end, now - timedelta(days=settings.USAGE_HOUR_RETENTION_DAYS))
        five = _execute(cursor, sql.delete_before(sql.LEVEL_TABLES["5min"]), [five_minute_before])
        hours = _execute(cursor, sql.delete_before(sql.LEVEL_TABLES["hour"]), [hour_before])
    return PruneSummary(five, hours)
