"""usage.reads.queries against an independent oracle.

Every expected value here comes from the deltas the test itself wrote, summed with plain Python
over explicit datetimes: window bounds, local dates and day lengths are hand-written literals
(computed by hand from the calendar, cross-checked with the standard library only), never from
usage.reads.queries or usage.calendar. An off-by-one day, a wrong UTC offset or a DST hour lost in the
7/30/90-day windows therefore fails here, whichever level (5-minute, hour, day, month) the read
comes from.

All window bounds below fall on 5-minute boundaries, so "the delta's instant is in [lo, hi)" and
"the delta's 5-minute bucket is in [lo, hi)" agree: the oracle may compare instants.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User

from usage.reads import engine, queries, spend
from usage import rollups
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage

SECOND = timedelta(seconds=1)
FIELDS = ("requests", "error_requests", "estimated_requests", "input_tokens", "cached_input_tokens",
          "cache_write_tokens", "output_tokens", "cost_nanos")
ZERO = dict.fromkeys(FIELDS, 0)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _primes(below: int) -> list[int]:
    sieve = [True] * below
    sieve[0] = sieve[1] = False
    for n in range(2, int(below ** 0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = [False] * len(sieve[n * n :: n])
    return [n for n, prime in enumerate(sieve) if prime]


PRIMES = _primes(3000)  # 430 distinct primes: every delta's cost is one, so any miscount shows


def make(i: int, user, facade, at: datetime, **counters) -> UsageDelta:
    """Delta number i: cost the i-th prime, input tokens a prime from the other end."""
    values = {"requests": 1, "error_requests": int(i % 3 == 0), "estimated_requests": int(i % 4 == 1),
              "input_tokens": PRIMES[-1 - i], "cached_input_tokens": i % 7, "cache_write_tokens": i % 5,
              "output_tokens": i + 1, "cost_nanos": PRIMES[i]}
    values.update(counters)
    return UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk, at=at, **values)


# --- the oracle: plain sums over the deltas the test wrote ----------------------------------------


def oracle(deltas, keep=lambda d: True) -> dict:
    out = dict(ZERO)
    for d in deltas:
        if keep(d):
            for name in FIELDS:
                out[name] += getattr(d, name)
    return out


def within(lo: datetime, hi: datetime, user_id: int | None = None):
    return lambda d: lo <= d.at < hi and (user_id is None or d.user_id == user_id)


def got(totals) -> dict:
    return {name: getattr(totals, name) for name in FIELDS}


def metric(values: dict, by: str) -> int:
    return {"tokens": values["input_tokens"] + values["output_tokens"], "spend": values["cost_nanos"],
            "requests": values["requests"]}[by]


def share(part: int, whole: int) -> Decimal:
    return (Decimal(part) / whole).quantize(Decimal("0.0001")) if whole else Decimal(0)


# --- hand-written windows -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What "Last N days" must be at `now` in `zone`, written out by hand.

    start: local midnight of `first` (= today - (N-1) days); previous_start: local midnight of
    first - N days; previous_end: now - N x 24 hours (absolute time, so across a DST change its
    local time of day differs from now's by an hour).
    """
    zone: str
    key: str
    days: int
    now: datetime
    today: date
    first: date
    start: datetime
    previous_start: datetime
    previous_end: datetime
    today_start: datetime  # local midnight of `today`

    @property
    def dates(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(self.days)]

    def __str__(self):
        return f"{self.zone}-{self.key}"


EXPECTED = [
    # UTC, now 2026-05-20 09:00.
    Expected("UTC", "7d", 7, utc(2026, 5, 20, 9), date(2026, 5, 20), date(2026, 5, 14),
           utc(2026, 5, 14), utc(2026, 5, 7), utc(2026, 5, 13, 9), utc(2026, 5, 20)),
    Expected("UTC", "30d", 30, utc(2026, 5, 20, 9), date(2026, 5, 20), date(2026, 4, 21),
           utc(2026, 4, 21), utc(2026, 3, 22), utc(2026, 4, 20, 9), utc(2026, 5, 20)),
    Expected("UTC", "90d", 90, utc(2026, 5, 20, 9), date(2026, 5, 20), date(2026, 2, 20),
           utc(2026, 2, 20), utc(2025, 11, 22), utc(2026, 2, 19, 9), utc(2026, 5, 20)),
    # Berlin, now 2026-04-02 12:00 CEST. 7d and 30d start in CET (+1) and hold the 23-hour
    # 2026-03-29; the 90d previous window holds the 25-hour 2025-10-26 and starts in CEST (+2).
    Expected("Europe/Berlin", "7d", 7, utc(2026, 4, 2, 10), date(2026, 4, 2), date(2026, 3, 27),
           utc(2026, 3, 26, 23), utc(2026, 3, 19, 23), utc(2026, 3, 26, 10), utc(2026, 4, 1, 22)),
    Expected("Europe/Berlin", "30d", 30, utc(2026, 4, 2, 10), date(2026, 4, 2), date(2026, 3, 4),
           utc(2026, 3, 3, 23), utc(2026, 2, 1, 23), utc(2026, 3, 3, 10), utc(2026, 4, 1, 22)),
    Expected("Europe/Berlin", "90d", 90, utc(2026, 4, 2, 10), date(2026, 4, 2), date(2026, 1, 3),
           utc(2026, 1, 2, 23), utc(2025, 10, 4, 22), utc(2026, 1, 2, 10), utc(2026, 4, 1, 22)),
    # New York, now 2026-11-04 12:00 EST (-5); every start is in EDT (-4), the 7d window holds the
    # 25-hour 2026-11-01.
    Expected("America/New_York", "7d", 7, utc(2026, 11, 4, 17), date(2026, 11, 4), date(2026, 10, 29),
           utc(2026, 10, 29, 4), utc(2026, 10, 22, 4), utc(2026, 10, 28, 17), utc(2026, 11, 4, 5)),
    Expected("America/New_York", "30d", 30, utc(2026, 11, 4, 17), date(2026, 11, 4), date(2026, 10, 6),
           utc(2026, 10, 6, 4), utc(2026, 9, 6, 4), utc(2026, 10, 5, 17), utc(2026, 11, 4, 5)),
    Expected("America/New_York", "90d", 90, utc(2026, 11, 4, 17), date(2026, 11, 4), date(2026, 8, 7),
           utc(2026, 8, 7, 4), utc(2026, 5, 9, 4), utc(2026, 8, 6, 17), utc(2026, 11, 4, 5)),
    # Kathmandu (+5:45), now 2026-01-20 12:00 local: local midnight is 18:15 UTC the day before.
    Expected("Asia/Kathmandu", "7d", 7, utc(2026, 1, 20, 6, 15), date(2026, 1, 20), date(2026, 1, 14),
           utc(2026, 1, 13, 18, 15), utc(2026, 1, 6, 18, 15), utc(2026, 1, 13, 6, 15), utc(2026, 1, 19, 18, 15)),
    Expected("Asia/Kathmandu", "30d", 30, utc(2026, 1, 20, 6, 15), date(2026, 1, 20), date(2025, 12, 22),
           utc(2025, 12, 21, 18, 15), utc(2025, 11, 21, 18, 15), utc(2025, 12, 21, 6, 15), utc(2026, 1, 19, 18, 15)),
    Expected("Asia/Kathmandu", "90d", 90, utc(2026, 1, 20, 6, 15), date(2026, 1, 20), date(2025, 10, 23),
           utc(2025, 10, 22, 18, 15), utc(2025, 7, 24, 18, 15), utc(2025, 10, 22, 6, 15), utc(2026, 1, 19, 18, 15)),
]


def test_the_hand_written_windows_agree_with_the_calendar():
    """Guards the literals above (standard library only): a typo here would weaken every test."""
    for w in EXPECTED:
        tz = ZoneInfo(w.zone)
        assert w.now.astimezone(tz).date() == w.today
        assert (w.today - w.first).days == w.days - 1 and w.dates[-1] == w.today
        assert w.start.astimezone(tz).replace(tzinfo=None) == datetime(w.first.year, w.first.month, w.first.day)
        previous_first = w.previous_start.astimezone(tz)
        assert previous_first.replace(tzinfo=None) == datetime.combine(previous_first.date(), datetime.min.time())
        assert (w.first - previous_first.date()).days == w.days
        assert w.now - w.previous_end == timedelta(hours=24 * w.days)
        assert w.today_start.astimezone(tz).replace(tzinfo=None) == datetime(w.today.year, w.today.month, w.today.day)


@pytest.mark.parametrize("w", EXPECTED, ids=str)
def test_resolve_window_gives_the_hand_written_bounds(w, settings):
    settings.TIME_ZONE = w.zone
    window = queries.resolve_window(w.key, w.now)
    assert (window.start, window.end, window.previous_start, window.previous_end) == (
        w.start, w.now, w.previous_start, w.previous_end)
    assert window.days == w.days
    assert window.dates == w.dates


@pytest.mark.parametrize("w", EXPECTED, ids=str)
def test_summary_previous_and_each_day_count_exactly_the_deltas_inside_each_boundary(w, settings, alice, bob,
                                                                                     gpt, claude):
    settings.TIME_ZONE = w.zone
    # (instant, the window it belongs to, its local date when in the current window)
    placed = [
        (w.previous_start - SECOND, None, None),
        (w.previous_start, "previous", None),
        (w.previous_start + timedelta(hours=36), "previous", None),
        (w.previous_end - SECOND, "previous", None),
        (w.previous_end, None, None),  # between the windows: in neither
        (w.start - SECOND, None, None),  # still the day before `first`: in neither
        (w.start, "current", w.first),
        (w.start + timedelta(hours=36), "current", w.first + timedelta(days=1)),  # local noon
        (w.today_start - SECOND, "current", w.today - timedelta(days=1)),
        (w.today_start, "current", w.today),
        (w.now - SECOND, "current", w.today),
        (w.now, None, None),  # the next 5-minute bucket: not yet in the window
    ]
    users, facades = [alice, bob], [gpt, claude]
    deltas = [make(i, users[i % 2], facades[(i // 2) % 2], at) for i, (at, _, _) in enumerate(placed)]
    record_many(deltas)
    where = {d.id: (side, day) for d, (_, side, day) in zip(deltas, placed)}
    for at, _, day in placed:
        if day:
            assert at.astimezone(ZoneInfo(w.zone)).date() == day, at  # the standard library agrees

    window = queries.resolve_window(w.key, w.now)
    for user in (None, alice, bob):
        uid = user.pk if user else None
        mine = [d for d in deltas if uid is None or d.user_id == uid]
        summary = queries.summary(window, uid)
        assert got(summary.totals) == oracle(d for d in mine if where[d.id][0] == "current"), user
        assert got(summary.previous) == oracle(d for d in mine if where[d.id][0] == "previous"), user
        series = queries.daily_series(window, uid)
        expected = {day: oracle(d for d in mine if where[d.id] == ("current", day)) for day in w.dates}
        assert [(p.date, got(p.totals)) for p in series] == [(day, expected[day]) for day in w.dates], user
    assert [side for side, _ in where.values()].count("current") == 5
    assert [side for side, _ in where.values()].count("previous") == 3
    assert summary.complete_through is None


# --- days of 23 and 25 hours, and a +5:45 zone --------------------------------------------------

DST_DAYS = [
    # zone, key, now, the odd day, its first instant, its end, its length in hours,
    # [(instant, local date)] -- every instant inside the current window.
    pytest.param(
        "Europe/Berlin", "7d", utc(2026, 4, 2, 10), date(2026, 3, 29), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23,
        [(utc(2026, 3, 28, 22, 59, 59), date(2026, 3, 28)),  # 23:59:59 CET
         (utc(2026, 3, 28, 23), date(2026, 3, 29)),  # 00:00 CET: the first hour
         (utc(2026, 3, 28, 23, 59, 59), date(2026, 3, 29)),
         (utc(2026, 3, 29, 0, 59, 59), date(2026, 3, 29)),  # 01:59:59 CET, just before the jump
         (utc(2026, 3, 29, 1), date(2026, 3, 29)),  # 03:00 CEST
         (utc(2026, 3, 29, 21), date(2026, 3, 29)),  # 23:00 CEST: the last hour
         (utc(2026, 3, 29, 21, 59, 59), date(2026, 3, 29)),
         (utc(2026, 3, 29, 22), date(2026, 3, 30)),  # 00:00 CEST
         (utc(2026, 3, 29, 22, 59, 59), date(2026, 3, 30))],  # a fixed +1 would say 03-29
        id="berlin-spring-forward-23h"),
    pytest.param(
        "Europe/Berlin", "7d", utc(2025, 10, 29, 11), date(2025, 10, 26), utc(2025, 10, 25, 22), utc(2025, 10, 26, 23),
        25,
        [(utc(2025, 10, 25, 21, 59, 59), date(2025, 10, 25)),  # 23:59:59 CEST
         (utc(2025, 10, 25, 22), date(2025, 10, 26)),  # 00:00 CEST: the first hour
         (utc(2025, 10, 25, 22, 59, 59), date(2025, 10, 26)),
         (utc(2025, 10, 26, 0, 30), date(2025, 10, 26)),  # 02:30 CEST
         (utc(2025, 10, 26, 1, 30), date(2025, 10, 26)),  # 02:30 CET, the repeated hour
         (utc(2025, 10, 26, 22), date(2025, 10, 26)),  # 23:00 CET: the last hour
         (utc(2025, 10, 26, 22, 59, 59), date(2025, 10, 26)),  # a fixed +2 would say 10-27
         (utc(2025, 10, 26, 23), date(2025, 10, 27))],
        id="berlin-fall-back-25h"),
    pytest.param(
        "America/New_York", "7d", utc(2026, 3, 11, 16), date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23,
        [(utc(2026, 3, 8, 4, 59, 59), date(2026, 3, 7)),  # 23:59:59 EST
         (utc(2026, 3, 8, 5), date(2026, 3, 8)),  # 00:00 EST: the first hour
         (utc(2026, 3, 8, 5, 59, 59), date(2026, 3, 8)),
         (utc(2026, 3, 8, 6, 59, 59), date(2026, 3, 8)),  # 01:59:59 EST
         (utc(2026, 3, 8, 7), date(2026, 3, 8)),  # 03:00 EDT
         (utc(2026, 3, 9, 3), date(2026, 3, 8)),  # 23:00 EDT: the last hour
         (utc(2026, 3, 9, 3, 59, 59), date(2026, 3, 8)),
         (utc(2026, 3, 9, 4), date(2026, 3, 9)),  # 00:00 EDT
         (utc(2026, 3, 9, 4, 30), date(2026, 3, 9))],  # a fixed -5 would say 03-08
        id="new-york-spring-forward-23h"),
    pytest.param(
        "America/New_York", "7d", utc(2026, 11, 4, 17), date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25,
        [(utc(2026, 11, 1, 3, 59, 59), date(2026, 10, 31)),  # 23:59:59 EDT
         (utc(2026, 11, 1, 4), date(2026, 11, 1)),  # 00:00 EDT: the first hour
         (utc(2026, 11, 1, 4, 59, 59), date(2026, 11, 1)),
         (utc(2026, 11, 1, 5, 30), date(2026, 11, 1)),  # 01:30 EDT
         (utc(2026, 11, 1, 6, 30), date(2026, 11, 1)),  # 01:30 EST, the repeated hour
         (utc(2026, 11, 2, 4), date(2026, 11, 1)),  # 23:00 EST: the last hour
         (utc(2026, 11, 2, 4, 59, 59), date(2026, 11, 1)),  # a fixed -4 would say 11-02
         (utc(2026, 11, 2, 5), date(2026, 11, 2))],
        id="new-york-fall-back-25h"),
    pytest.param(
        "Asia/Kathmandu", "7d", utc(2026, 1, 20, 6, 15), date(2026, 1, 16), utc(2026, 1, 15, 18, 15),
        utc(2026, 1, 16, 18, 15), 24,
        [(utc(2026, 1, 15, 18, 5), date(2026, 1, 15)),  # 23:50; +6:00 would say 01-16
         (utc(2026, 1, 15, 18, 14, 59), date(2026, 1, 15)),
         (utc(2026, 1, 15, 18, 15), date(2026, 1, 16)),  # 00:00; +5:30 would say 01-15
         (utc(2026, 1, 15, 18, 59, 59), date(2026, 1, 16)),
         (utc(2026, 1, 16, 18), date(2026, 1, 16)),  # 23:45
         (utc(2026, 1, 16, 18, 14, 59), date(2026, 1, 16)),
         (utc(2026, 1, 16, 18, 15), date(2026, 1, 17))],
        id="kathmandu-plus-5-45"),
]


@pytest.mark.parametrize("rolled", ["unrolled", "rolled-into-the-odd-day", "rolled-to-now"])
@pytest.mark.parametrize("zone, key, now, odd_day, day_start, day_end, hours, placed", DST_DAYS)
def test_deltas_at_the_edges_of_23_and_25_hour_days_land_on_their_local_date(
        zone, key, now, odd_day, day_start, day_end, hours, placed, rolled, settings, alice, bob, gpt, claude):
    settings.TIME_ZONE = zone
    tz = ZoneInfo(zone)
    assert day_end - day_start == timedelta(hours=hours)  # the literals describe the odd day
    assert day_start.astimezone(tz).date() == odd_day and (day_end - SECOND).astimezone(tz).date() == odd_day
    for at, day in placed:
        assert at.astimezone(tz).date() == day, at  # the standard library agrees with the table

    deltas = [make(i, (alice, bob)[i % 2], (gpt, claude)[i % 3 == 0], at) for i, (at, _) in enumerate(placed)]
    on_day = dict(zip((d.id for d in deltas), (day for _, day in placed)))
    # Half now; the other half after the rollup (late, behind the watermark, when rolled).
    record_many(deltas[::2])
    if rolled != "unrolled":
        until = day_start + timedelta(hours=5) if rolled == "rolled-into-the-odd-day" else now
        rollups.roll_up(until=until, now=now)
        assert rollups.watermark() == (day_start + timedelta(hours=5) if rolled == "rolled-into-the-odd-day"
                                       else now - timedelta(hours=1))
    record_many(deltas[1::2])

    window = queries.resolve_window(key, now)
    for user in (None, alice):
        uid = user.pk if user else None
        mine = [d for d in deltas if uid is None or d.user_id == uid]
        points = {p.date: got(p.totals) for p in queries.daily_series(window, uid)}
        assert points[odd_day] == oracle(d for d in mine if on_day[d.id] == odd_day)
        for day in {day for _, day in placed}:
            assert points[day] == oracle(d for d in mine if on_day[d.id] == day), day
        assert got(queries.summary(window, uid).totals) == oracle(mine)
        # The odd day read as a span on its own, from whatever levels hold it.
        assert got(queries.totals_between(day_start, day_end, uid)) == oracle(
            d for d in mine if on_day[d.id] == odd_day)
    assert sum(1 for _, day in placed if day == odd_day) >= 4


# --- mixed levels: month, day and hour rows before the watermark, 5-minute rows after ----------

BERLIN_90 = next(w for w in EXPECTED if (w.zone, w.key) == ("Europe/Berlin", "90d"))
BERLIN_7 = next(w for w in EXPECTED if (w.zone, w.key) == ("Europe/Berlin", "7d"))

# Ranges for spend_by_user: local February (a month row), the 23-hour 2026-03-29 (hours, then
# 5-minute rows after the first cut), local 2026-01-01 up to past the first cut, a 7d window.
SPEND_RANGES = [
    (utc(2026, 1, 31, 23), utc(2026, 2, 28, 23)),
    (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
    (utc(2025, 12, 31, 23), utc(2026, 3, 29, 12)),
    (BERLIN_7.start, BERLIN_7.now),
    (BERLIN_90.previous_start, BERLIN_90.previous_end),
]


def check_totals_facades_board_and_spend(w: Expected, deltas: list[UsageDelta], users, facades):
    """Every read of the window except the daily series (see the next check), against the oracle."""
    window = queries.resolve_window(w.key, w.now)
    current, previous = within(w.start, w.now), within(w.previous_start, w.previous_end)
    for user in (None, *users):
        uid = user.pk if user else None
        mine = [d for d in deltas if uid is None or d.user_id == uid]
        summary = queries.summary(window, uid)
        assert got(summary.totals) == oracle(mine, current), f"current totals, user {user}"
        assert got(summary.previous) == oracle(mine, previous), f"previous totals, user {user}"

    for uid in (None, users[0].pk):
        rows = queries.by_facade(window, uid)
        per = {f.pk: oracle(deltas, lambda d, f=f: current(d) and d.facade_id == f.pk and
                            (uid is None or d.user_id == uid)) for f in facades}
        per = {fid: t for fid, t in per.items() if t["requests"]}
        whole = sum(t["cost_nanos"] for t in per.values())
        names = {f.pk: f.name for f in facades}
        expected = sorted(((fid, names[fid], t, share(t["cost_nanos"], whole)) for fid, t in per.items()),
                          key=lambda row: (-row[2]["cost_nanos"], row[1]))
        assert [(r.facade_id, r.facade_name, got(r.totals), r.share) for r in rows] == expected

    for by in ("tokens", "spend", "requests"):
        now_per = {u.pk: oracle(deltas, lambda d, u=u: current(d) and d.user_id == u.pk) for u in users}
        then_per = {u.pk: oracle(deltas, lambda d, u=u: previous(d) and d.user_id == u.pk) for u in users}
        ranked = sorted((uid for uid, t in now_per.items() if t["requests"]),
                        key=lambda uid: (-metric(now_per[uid], by), uid))
        before = sorted((uid for uid, t in then_per.items() if t["requests"]),
                        key=lambda uid: (-metric(then_per[uid], by), uid))
        whole = sum(metric(now_per[uid], by) for uid in ranked)
        names = {u.pk: u.username for u in users}
        expected = [(rank, before.index(uid) + 1 if uid in before else None, uid, names[uid], now_per[uid],
                     share(metric(now_per[uid], by), whole)) for rank, uid in enumerate(ranked, 1)]
        board = queries.leaderboard(window, by)
        assert [(r.rank, r.previous_rank, r.user_id, r.username, got(r.totals), r.share) for r in board] == expected, by
        assert queries.leaderboard_count(window) == len(ranked)

    for lo, hi in [*SPEND_RANGES, (None, w.now)]:
        keep = within(lo or datetime.min.replace(tzinfo=UTC), hi)
        expected = {u.pk: oracle(deltas, lambda d, u=u: keep(d) and d.user_id == u.pk)["cost_nanos"] for u in users}
        assert spend.spend_by_user(lo, hi) == {uid: c for uid, c in expected.items() if c}, (lo, hi)
        assert spend.spend_by_user(lo, hi, {users[1].pk}) == (
            {users[1].pk: expected[users[1].pk]} if expected[users[1].pk] else {}), (lo, hi)


def wrong_days(w: Expected, deltas: list[UsageDelta], users) -> list[tuple]:
    """[(user, local date, read, oracle)] for every point of the daily series that is off."""
    tz = ZoneInfo(w.zone)
    window = queries.resolve_window(w.key, w.now)
    current = within(w.start, w.now)
    wrong = []
    for user in (None, *users):
        uid = user.pk if user else None
        series = queries.daily_series(window, uid)
        assert [p.date for p in series] == w.dates
        for point in series:
            expected = oracle(deltas, lambda d: current(d) and (uid is None or d.user_id == uid)
                              and d.at.astimezone(tz).date() == point.date)
            if got(point.totals) != expected:
                wrong.append((user and user.username, point.date, point.totals.requests, expected["requests"]))
    return wrong


def mixed_levels_scenario(settings, users, facades):
    """Berlin, 90d at 2026-04-02 12:00 CEST. Yields (stage, every delta written so far) at each
    stage: rolled into the 23-hour 2026-03-29 (whole months, days, hours and 5-minute rows read
    together); then late deltas behind the watermark at every level; then 5-minute retention;
    then rolled to now, pruned, and late again."""
    w = BERLIN_90
    settings.TIME_ZONE = w.zone
    settings.USAGE_5MIN_RETENTION_DAYS = 1
    alice, bob, carol = users
    gpt, claude = facades

    # Steady traffic from before the previous window to past now, every 29 h 17 min, plus a
    # delta either side of each window bound.
    deltas, at, i = [], utc(2025, 9, 30, 0, 7), 0
    while at < w.now + timedelta(hours=2):
        deltas.append(make(i, users[i % 3], facades[(i // 3) % 2], at))
        at += timedelta(hours=29, minutes=17)
        i += 1
    for bound in (w.previous_start, w.previous_end, w.start, w.now):
        for at in (bound - SECOND, bound):
            deltas.append(make(i, bob, claude, at))
            i += 1
    record_many(deltas)

    # Roll into the 23-hour day: whole months to February, days to 2026-03-28, hours of
    # 2026-03-29 until 11:00 CEST, 5-minute rows after.
    rollups.roll_up(until=utc(2026, 3, 29, 9, 40), now=w.now)
    watermark = utc(2026, 3, 29, 9)
    assert rollups.watermark() == watermark
    window = queries.resolve_window(w.key, w.now)
    levels = {model for model, _, _ in engine.segments(window.start, window.end, watermark)}
    levels |= {model for model, _, _ in engine.segments(window.previous_start, window.previous_end, watermark)}
    assert levels == {MonthlyUsage, DailyUsage, HourlyUsage, FiveMinuteUsage}  # the mix is real
    yield "rolled to 2026-03-29 11:00 CEST", deltas

    # Late deltas, behind the watermark: into rolled months, rolled days, rolled hours of the
    # unfinished day, and on each window bound.
    late_at = [
        utc(2026, 2, 14, 12, 3),  # February: month, day and hour rows take it
        utc(2025, 12, 15, 6),  # previous window, a rolled month
        utc(2026, 3, 10, 8, 59, 59),  # a rolled day of the unrolled March
        utc(2026, 3, 28, 23),  # the first second of the 23-hour day (hour rolled, day not)
        utc(2026, 3, 29, 8, 59, 59),  # the last second before the watermark
        utc(2026, 3, 29, 9),  # at the watermark: 5-minute row only
        w.previous_start - SECOND, w.previous_start, w.previous_end - SECOND, w.previous_end,
        w.start - SECOND, w.start,
    ]
    late = [make(i + n, users[n % 3], facades[n % 2], at) for n, at in enumerate(late_at)]
    i += len(late)
    record_many(late)
    deltas += late
    yield "late deltas behind the watermark", deltas

    # Retention: the 5-minute rows behind the watermark go; every read must still hold.
    pruned = rollups.prune(now=w.now)
    assert pruned.five_minute_rows > 0
    assert not FiveMinuteUsage.objects.filter(bucket_start__lt=watermark).exists()
    yield "5-minute rows behind the watermark pruned", deltas

    # Roll the rest (to 11:00 CEST on 2026-04-02), prune again, then more late deltas.
    rollups.roll_up(now=w.now)
    assert rollups.watermark() == utc(2026, 4, 2, 9)
    rollups.prune(now=w.now)
    more = [make(i, alice, gpt, utc(2026, 3, 15, 3)), make(i + 1, carol, claude, utc(2026, 4, 2, 8, 59, 59)),
            make(i + 2, bob, gpt, utc(2026, 4, 2, 9, 59, 59))]
    record_many(more)
    deltas += more
    yield "rolled to now, pruned, late again", deltas


def test_reads_mixing_month_day_hour_and_5_minute_rows_with_late_deltas_equal_the_oracle(settings, alice, bob,
                                                                                           gpt, claude):
    carol = User.objects.create_user("carol", "carol@example.com", "carol-password")
    users, facades = [alice, bob, carol], [gpt, claude]
    for stage, deltas in mixed_levels_scenario(settings, users, facades):
        check_totals_facades_board_and_spend(BERLIN_90, deltas, users, facades)


def test_daily_series_mixing_month_day_hour_and_5_minute_rows_equals_the_oracle(settings, alice, bob, gpt, claude):
    # A whole rolled local month inside the window (February here) must not land on its 1st: the
    # series reads day rows at the coarsest (a regression test for the month-on-the-1st bug).
    carol = User.objects.create_user("carol", "carol@example.com", "carol-password")
    users, facades = [alice, bob, carol], [gpt, claude]
    for stage, deltas in mixed_levels_scenario(settings, users, facades):
        wrong = wrong_days(BERLIN_90, deltas, users)
        assert not wrong, (f"{stage}: {len(wrong)} points of the daily series are off "
                           f"[(user, local date, requests read, requests written)]: {wrong}")


# --- ranks, shares and facades, hand-written ------------------------------------------------------


def test_leaderboard_and_by_facade_hand_written(settings, alice, bob, gpt, claude):
    """Kathmandu 7d at 2026-01-20 12:00 local: current window from 2026-01-13 18:15 UTC, previous
    [2026-01-06 18:15, 2026-01-13 06:15) UTC. Large deltas sit just outside each bound: counting
    any of them reorders the board."""
    w = next(w for w in EXPECTED if (w.zone, w.key) == ("Asia/Kathmandu", "7d"))
    settings.TIME_ZONE = w.zone
    carol = User.objects.create_user("carol", "carol@example.com", "carol-password")
    assert alice.pk < bob.pk < carol.pk
    inside, before = w.start + timedelta(hours=3), w.previous_start + timedelta(hours=3)

    def delta(user, facade, at, input_tokens, output_tokens, cost_nanos):
        return UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk, at=at, input_tokens=input_tokens,
                          output_tokens=output_tokens, cost_nanos=cost_nanos)

    record_many([
        # current window
        delta(alice, gpt, inside, 1000, 200, 101),
        delta(alice, claude, w.now - SECOND, 10, 5, 9973),
        *[delta(bob, gpt, w.start + timedelta(days=k), 700, 0, 13) for k in range(3)],
        delta(carol, claude, inside, 300, 300, 5003),
        # previous window
        delta(carol, gpt, w.previous_end - SECOND, 5000, 0, 1),
        delta(alice, gpt, before, 100, 0, 2),
        # in neither window
        delta(carol, claude, w.start - SECOND, 10_000, 0, 100_003),
        delta(bob, claude, w.now, 10_000, 0, 100_019),
        delta(bob, gpt, w.previous_end, 10_000, 0, 100_043),
        delta(bob, gpt, w.previous_start - SECOND, 10_000, 0, 100_049),
    ])
    window = queries.resolve_window(w.key, w.now)

    def board(by, **kwargs):
        return [(r.rank, r.previous_rank, r.username, r.totals.metric(by), r.share)
                for r in queries.leaderboard(window, by, **kwargs)]

    # tokens: bob 3 x 700, alice 1000 + 200 + 10 + 5, carol 600; before: carol 5000, alice 100.
    assert board("tokens") == [(1, None, "bob", 2100, Decimal("0.5364")), (2, 2, "alice", 1215, Decimal("0.3103")),
                               (3, 1, "carol", 600, Decimal("0.1533"))]
    # spend: alice 101 + 9973, carol 5003, bob 3 x 13; before: alice 2, carol 1.
    assert board("spend") == [(1, 1, "alice", 10074, Decimal("0.6664")), (2, 2, "carol", 5003, Decimal("0.3310")),
                              (3, None, "bob", 39, Decimal("0.0026"))]
    # requests: bob 3, alice 2, carol 1; before: alice and carol 1 each, the tie goes to the lower id.
    assert board("requests") == [(1, None, "bob", 3, Decimal("0.5000")), (2, 1, "alice", 2, Decimal("0.3333")),
                                 (3, 2, "carol", 1, Decimal("0.1667"))]
    assert board("tokens", limit=1, offset=1) == [(2, 2, "alice", 1215, Decimal("0.3103"))]
    assert queries.leaderboard_count(window) == 3

    rows = [(r.facade_name, r.totals.requests, r.totals.input_tokens, r.totals.output_tokens, r.totals.cost_nanos,
             r.share) for r in queries.by_facade(window)]
    assert rows == [("claude-test", 2, 310, 305, 14976, Decimal("0.9907")),
                    ("gpt-test", 4, 3100, 200, 140, Decimal("0.0093"))]
    rows = [(r.facade_name, r.totals.cost_nanos, r.share) for r in queries.by_facade(window, alice.pk)]
    assert rows == [("claude-test", 9973, Decimal("0.9900")), ("gpt-test", 101, Decimal("0.0100"))]

    summary = queries.summary(window)
    assert (summary.totals.requests, summary.totals.cost_nanos) == (6, 15116)
    assert (summary.previous.requests, summary.previous.cost_nanos) == (2, 3)

    # spend_by_user over explicit ranges, ends exclusive.
    assert spend.spend_by_user(w.start, w.now) == {alice.pk: 10074, bob.pk: 39, carol.pk: 5003}
    five = timedelta(minutes=5)  # range ends on 5-minute boundaries: the ledger's resolution
    assert spend.spend_by_user(w.start - five, w.now + five) == {alice.pk: 10074, bob.pk: 39 + 100_019,
                                                                     carol.pk: 5003 + 100_003}
    assert spend.spend_by_user(w.previous_start, w.previous_end, {carol.pk, bob.pk}) == {carol.pk: 1}
    assert spend.spend_by_user(None, w.previous_end + five) == {alice.pk: 2, bob.pk: 100_049 + 100_043,
                                                                    carol.pk: 1}


# --- a previous window that ends mid-hour, once its 5-minute rows are pruned ----------------------


def test_previous_totals_ending_mid_hour_survive_pruning(settings, alice, gpt):
    """`now` is rarely on an hour, so now - N days rarely is either; by then the 5-minute rows of
    that partial hour are past retention, and no rolled level can give part of an hour. So the
    previous window ends at the start of that local hour: now = 2026-05-20 09:35 UTC, 7d: previous
    window [2026-05-07 00:00, 2026-05-13 09:00) UTC, exact before and after pruning. (Found as a
    bug by this file: it ended at 09:35 and lost 09:00-09:35 once pruned.)"""
    settings.TIME_ZONE = "UTC"
    settings.USAGE_5MIN_RETENTION_DAYS = 3
    now = utc(2026, 5, 20, 9, 35)
    placed = [(utc(2026, 5, 13, 8, 59, 59), True), (utc(2026, 5, 13, 9), False), (utc(2026, 5, 13, 9, 34, 59), False),
              (utc(2026, 5, 13, 9, 35), False), (utc(2026, 5, 14, 12), False)]
    deltas = [make(i, alice, gpt, at) for i, (at, _) in enumerate(placed)]
    record_many(deltas)
    window = queries.resolve_window("7d", now)
    assert window.previous_end == utc(2026, 5, 13, 9)
    expected = oracle(d for d, (_, previous) in zip(deltas, placed) if previous)
    assert got(queries.summary(window).previous) == expected  # before any rollup: 5-minute rows

    rollups.roll_up(now=now)
    assert got(queries.summary(window).previous) == expected  # rolled: hours, then 5-minute rows
    rollups.prune(now=now)  # USAGE_5MIN_RETENTION_DAYS (3) < 7: 05-13's 5-minute rows are gone
    assert got(queries.summary(window).previous) == expected  # whole hours: read from hour rows


# --- how a read runs on PostgreSQL: without parallel workers, and nothing left behind -----------


def _setting_and_state():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW max_parallel_workers_per_gather")
        setting = cursor.fetchone()[0]
    return setting, connection.connection.info.transaction_status.name


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_read_outside_a_transaction_runs_without_parallel_workers_in_one_transaction_of_its_own():
    from django.db import DataError

    before = _setting_and_state()
    assert before[1] == "IDLE"  # autocommit, nothing open
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as sent:
        rows = engine.fetch_serial("SELECT current_setting('max_parallel_workers_per_gather'), %s::int + 1", [41])
    assert rows == [("0", 42)]
    assert len(sent.captured_queries) == 1  # one round trip: BEGIN, the setting, the read and COMMIT in one text
    assert _setting_and_state() == before  # the setting was local to the read's transaction
    with pytest.raises(DataError, match="division by zero"):
        engine.fetch_serial("SELECT 1 / (%s::int - 1)", [1])
    assert _setting_and_state() == before  # the failed read's transaction is rolled back
    assert engine.fetch_serial("SELECT %s::int", [7]) == [(7,)]


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_read_inside_the_callers_transaction_puts_the_setting_back():
    from django.db import transaction

    with transaction.atomic():
        before = _setting_and_state()
        assert engine.fetch_serial("SELECT current_setting('max_parallel_workers_per_gather')", []) == [("0",)]
        assert _setting_and_state() == before
