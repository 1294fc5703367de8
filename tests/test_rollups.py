"""usage.rollups and usage.reads.queries together: after any sequence of deltas (late ones included),
rollups (interrupted or not) and retention, every read equals a brute-force sum of the deltas."""

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from usage.reads import queries
from usage import rollups
from usage.ledger.delta import UsageDelta, five_minute_start
from usage.ledger.plan import record_many
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.calendar import day_bounds, local_date
from usage.sql import COUNTERS

START = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)  # the weekend New York springs forward


def brute(deltas, start, end, user_id=None):
    total = dict.fromkeys(COUNTERS, 0)
    for d in deltas:
        if start <= five_minute_start(d.at) < end and (user_id is None or d.user_id == user_id):
            for name in COUNTERS:
                total[name] += getattr(d, name)
    return queries.Totals(**total)


steps = st.lists(st.one_of(
    st.tuples(st.just("delta"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 50 * 60),
              st.integers(1, 10_000)),
    st.tuples(st.just("advance"), st.integers(1, 20 * 60)),
    st.just(("rollup",)),
    st.tuples(st.just("interrupted-rollup"), st.integers(1, 6)),
    st.just(("prune",)),
), min_size=4, max_size=16)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kathmandu"])
@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=steps)
def test_every_read_equals_the_sum_of_every_delta_at_every_step(zone, program, alice, bob, gpt, claude):
    users, facades = [alice, bob], [gpt, claude]
    with override_settings(TIME_ZONE=zone, USAGE_5MIN_RETENTION_DAYS=1), transaction.atomic():
        now, deltas = START, []
        for step in program:
            if step[0] == "delta":
                _, u, f, minutes_back, tokens = step
                at = now - timedelta(minutes=minutes_back, seconds=7)  # up to 50 hours late
                delta = UsageDelta(id=uuid.uuid4().hex, user_id=users[u].pk, facade_id=facades[f].pk, at=at,
                                   input_tokens=tokens, output_tokens=tokens // 3, cost_nanos=tokens * 1001)
                record_many([delta])
                deltas.append(delta)
            elif step[0] == "advance":
                now += timedelta(minutes=step[1])
            elif step[0] == "rollup":
                rollups.roll_up(now=now)
            elif step[0] == "interrupted-rollup":
                current = rollups.watermark() or rollups.target_for(now)
                rollups.roll_up(until=current + timedelta(hours=step[1]), now=now)
            else:
                rollups.prune(now=now)
            check_reads(deltas, now, users, zone)
        transaction.set_rollback(True)


def check_reads(deltas, now, users, zone):
    tz = ZoneInfo(zone)
    period = queries.resolve_window("7d", now)
    for user in (None, users[0]):
        uid = user.pk if user else None
        assert queries.summary(period, uid).totals == brute(deltas, period.start, now, uid)
        series = queries.daily_series(period, uid)
        assert [p.date for p in series] == period.dates
        for point in series:
            day_start, day_end = day_bounds(datetime(point.date.year, point.date.month, point.date.day, 12,
                                                     tzinfo=tz), tz)
            assert point.totals == brute(deltas, day_start, min(day_end, now), uid), point.date
    total = brute(deltas, period.start, now)
    assert sum((r.totals for r in queries.by_facade(period)), queries.Totals()) == total
    board = queries.leaderboard(period, "tokens")
    assert sum((r.totals for r in board), queries.Totals()) == total
    assert [r.rank for r in board] == list(range(1, len(board) + 1))


def record_at(user, facade, at, tokens):
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk, at=at, input_tokens=tokens,
                            cost_nanos=tokens)])


@pytest.mark.parametrize("zone, day, expected_hours", [
    ("America/New_York", datetime(2026, 3, 8, 12, tzinfo=UTC), 23),
    ("America/New_York", datetime(2026, 11, 1, 12, tzinfo=UTC), 25),
    ("Asia/Kolkata", datetime(2026, 1, 10, 12, tzinfo=UTC), 24),
    ("Asia/Kathmandu", datetime(2026, 1, 10, 12, tzinfo=UTC), 24),
    ("UTC", datetime(2026, 1, 10, 12, tzinfo=UTC), 24),
])
def test_a_local_day_rolls_into_one_day_row_with_exact_totals(zone, day, expected_hours, alice, gpt):
    with override_settings(TIME_ZONE=zone):
        tz = ZoneInfo(zone)
        day_start, day_end = day_bounds(day, tz)
        # One delta at the start of every 5-minute bucket of the local day, and one just outside each end.
        t, inside = day_start, 0
        while t < day_end:
            record_at(alice, gpt, t, 1)
            inside += 1
            t += timedelta(minutes=5)
        record_at(alice, gpt, day_start - timedelta(seconds=1), 1000)
        record_at(alice, gpt, day_end, 1000)
        assert inside == expected_hours * 12
        summary = rollups.roll_up(now=day_end + timedelta(hours=3))
        assert summary.days >= 1
        rows = {r.bucket_start: r.input_tokens for r in DailyUsage.objects.all()}
        assert rows[day_start] == inside
        assert HourlyUsage.objects.filter(bucket_start__gte=day_start, bucket_start__lt=day_end).count() == expected_hours
        assert queries.totals_between(day_start, day_end).input_tokens == inside
        assert local_date(day_start, tz) == local_date(day, tz)


def test_rollups_are_idempotent_and_pruning_keeps_every_total(alice, gpt, settings):
    settings.USAGE_5MIN_RETENTION_DAYS = 1
    base = datetime(2026, 5, 1, tzinfo=UTC)
    for hour in range(72):
        record_at(alice, gpt, base + timedelta(hours=hour, minutes=17), hour + 1)
    now = base + timedelta(days=3, hours=1)
    first = rollups.roll_up(now=now)
    assert (first.hours, first.days) == (72, 3)
    before = {m: sorted((r.bucket_start, r.input_tokens) for r in m.objects.all())
              for m in (HourlyUsage, DailyUsage, MonthlyUsage)}
    assert rollups.roll_up(now=now).hours == 0
    pruned = rollups.prune(now=now)
    assert pruned.five_minute_rows == 49  # bucket starts before now - 1 day (hours 0 to 48), all rolled
    assert FiveMinuteUsage.objects.count() == 23
    assert {m: sorted((r.bucket_start, r.input_tokens) for r in m.objects.all())
            for m in (HourlyUsage, DailyUsage, MonthlyUsage)} == before
    assert queries.totals_between(base, now).input_tokens == sum(range(1, 73))


def test_rebuild_recomputes_within_retention_and_refuses_past_it(alice, gpt, settings):
    settings.USAGE_5MIN_RETENTION_DAYS = 2
    base = datetime(2026, 5, 1, tzinfo=UTC)
    for hour in range(48):
        record_at(alice, gpt, base + timedelta(hours=hour), 10)
    now = base + timedelta(days=2, hours=3)
    rollups.roll_up(now=now)
    DailyUsage.objects.update(input_tokens=0)  # damage a rolled level
    summary = rollups.rebuild(base + timedelta(days=1), now=now)
    assert summary.days == 1 and DailyUsage.objects.get(bucket_start=base + timedelta(days=1)).input_tokens == 240
    with pytest.raises(rollups.RebuildRefused, match="USAGE_5MIN_RETENTION_DAYS=2"):
        rollups.rebuild(base - timedelta(days=1), now=now)
