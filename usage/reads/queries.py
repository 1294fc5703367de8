"""Every read the usage pages, the API and the budgets use. Exact at every moment.

A span [start, end) is read from the coarsest level rolled for each part of it — whole months,
then whole days, then hours, all before the watermark — and from 5-minute rows for the rest, so
every total equals the sum of every delta recorded, the current 5-minute bucket included,
whatever the state of the rollups.
"""

import contextlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.calendar import as_utc, day_bounds, hour_start, local_date, local_midnight, month_bounds, next_hour, zone
from usage.money import nanos_to_usd
from usage.rollups import watermark
from usage.counters import COUNTERS, Counters
from usage import sql
from usage.reserved import is_reserved, label

WINDOWS = {"7d": 7, "30d": 30, "90d": 90}
LEADERBOARD_METRICS = ("tokens", "spend", "requests")
LEADERBOARD_GROUPS = ("user", "key", "project")


@dataclass(frozen=True)
class Window:
    key: str
    days: int
    start: datetime
    end: datetime
    previous_start: datetime
    previous_end: datetime
    dates: list[date]


def resolve_window(key: str, now: datetime | None = None) -> Window:
    """Last 7, 30 or 90 days: today (TIME_ZONE) up to now plus the days before; the previous
    window is the same window moved back by as many days, ending at the start of its last local
    hour: the 5-minute rows of a partial hour that far back are past retention, and no rolled level
    can give part of an hour, so a mid-hour end could not be exact."""
    if key not in WINDOWS:
        raise ValueError(f"unknown window {key!r}; use one of {', '.join(WINDOWS)}")
    days = WINDOWS[key]
    now = now or timezone.now()
    tz = zone()
    first = local_date(now, tz) - timedelta(days=days - 1)
    return Window(
        key=key, days=days, start=local_midnight(first, tz), end=now,
        previous_start=local_midnight(first - timedelta(days=days), tz),
        previous_end=hour_start(now - timedelta(days=days), tz),
        dates=[first + timedelta(days=i) for i in range(days)],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals(Counters):
    """Sums of the counters (usage.counters) over some rows."""

    @classmethod
    def of(cls, row: dict) -> "Totals":
        return cls(**{name: int(row.get(name) or 0) for name in COUNTERS})

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(**{name: getattr(self, name) + getattr(other, name) for name in COUNTERS})

    @property
    def spend_usd(self) -> Decimal:
        return nanos_to_usd(self.cost_nanos)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def metric(self, by: str) -> int:
        return {"tokens": self.tokens, "spend": self.cost_nanos, "requests": self.requests}[by]


LEVELS = ("hour", "day", "month")


def segments(start: datetime, end: datetime, rolled_through: datetime | None,
             coarsest: str = "month") -> list[tuple[type, datetime, datetime]]:
    """[(level model, from, to)] covering [start, end): coarsest rolled level first, but none
    coarser than `coarsest` (a series by day must not read a month row, which would put the whole
    month on its first day; a series by hour no day row)."""
    allowed = LEVELS[: LEVELS.index(coarsest) + 1]
    tz = zone()
    out: list[tuple[type, datetime, datetime]] = []
    rolled_end = min(end, rolled_through) if rolled_through else start
    t = start
    while t < rolled_end:
        month_start, month_end = month_bounds(t, tz)
        day_start, day_end = day_bounds(t, tz)
        if "month" in allowed and month_start == t and month_end <= rolled_end:
            piece = (MonthlyUsage, t, month_end)
        elif "day" in allowed and day_start == t and day_end <= rolled_end:
            piece = (DailyUsage, t, day_end)
        else:
            hour_end = next_hour(t, tz)
            if hour_end > rolled_end:
                break
            piece = (HourlyUsage, t, hour_end)
        if out and out[-1][0] is piece[0] and out[-1][2] == piece[1]:
            out[-1] = (piece[0], out[-1][1], piece[2])
        else:
            out.append(piece)
        t = piece[2]
    if t < end:
        out.append((FiveMinuteUsage, t, end))
    return out


def grouped_rows(start: datetime, end: datetime, group_by: tuple[str, ...], rolled_through: datetime | None,
                 coarsest: str = "month", **filters) -> list[dict]:
    """Counter sums over [start, end) per `group_by` values (ORM names such as "user_id",
    "key__prefix", "facade__name", "bucket_start"), one list of rows per level read — the same
    group may appear once per level: callers add them up. `filters` are ORM lookups."""
    sums = {name: Sum(name) for name in COUNTERS}
    rows: list[dict] = []
    for model, a, b in segments(start, end, rolled_through, coarsest):
        qs = model.objects.filter(bucket_start__gte=a, bucket_start__lt=b, **filters)
        if group_by:
            rows += list(qs.values(*group_by).annotate(**sums).order_by())
        else:
            rows.append(qs.aggregate(**sums))
    return rows


# --- the pages' reads: every segment of every span in one statement -----------------------------

# The columns _sums may group by, and the filters it takes: plain columns of the level tables.


def _key_model():
    return FiveMinuteUsage._meta.get_field("key").related_model  # gateway.ApiKey (usage never imports gateway)


def _project_model():
    return _key_model()._meta.get_field("project").related_model  # gateway.Project


def _project_keys() -> tuple[str, str]:
    """The key table and its project column, for the project filter (usage.sql.segment_filters)."""
    key_model = _key_model()
    return key_model._meta.db_table, key_model._meta.get_field("project").column


def _sums(spans: list[tuple[datetime, datetime]], group_by: tuple[str, ...], rolled_through: datetime | None,
          coarsest: str = "month", user_id: int | None = None, key_id: int | None = None,
          user_ids: set[int] | None = None, facade_names: bool = False, project_id: int | None = None,
          per_project: bool = False) -> list[dict]:
    """Counter sums per `group_by` columns (bucket key columns) and per span, over the segments of
    every span (see segments), read in ONE statement: a UNION ALL of each segment's level rows,
    summed in the database. Each row holds "span" (the index of its span in `spans`), the
    group_by values, the counters, and "facade_name" when `facade_names` (group_by has facade_id).
    The same numbers grouped_rows gives, with one round trip instead of one per segment (per-query
    overhead, not the database, was most of a page's time). `project_id` keeps the rows of that
    project's keys; `per_project` (group_by ("key_id",)) sums the keys' rows per project instead,
    each row with "project_id", "public_id" and "name"."""
    read = _sums_read(spans, group_by, rolled_through, coarsest, user_id, key_id, user_ids, facade_names, project_id,
                      per_project)
    return read.rows(_fetch_serial(read.statement, read.params)) if read else []


@dataclass(frozen=True)
class _Read:
    """One _sums statement, its parameters and how to name its rows."""

    statement: str
    params: list
    names: list[str]
    group_by: tuple[str, ...]

    def rows(self, fetched: list[tuple]) -> list[dict]:
        rows = [dict(zip(self.names, row)) for row in fetched]
        if "bucket_start" in self.group_by:
            for row in rows:
                row["bucket_start"] = as_utc(row["bucket_start"])
        return rows


def _sums_read(spans, group_by, rolled_through, coarsest="month", user_id=None, key_id=None, user_ids=None,
               facade_names=False, project_id=None, per_project=False) -> _Read | None:
    """_sums' statement (None: no segment to read)."""
    if per_project and group_by != ("key_id",):
        raise ValueError("per_project sums rows grouped by key_id alone")
    adapt = connection.ops.adapt_datetimefield_value
    where, where_params = sql.segment_filters(user_id, key_id, user_ids, project_id,
                                              _project_keys() if project_id is not None else None, connection.vendor)
    parts, params = [], []
    for index, (start, end) in enumerate(spans):
        for model, a, b in segments(start, end, rolled_through, coarsest):
            parts.append(sql.segment_sums(index, model._meta.db_table, group_by, where))
            params += [adapt(a), adapt(b), *where_params]
    if not parts:
        return None
    statement = sql.sums_of_segments(parts, group_by)
    names = ["span", *group_by, *COUNTERS]
    if facade_names:
        facades = FiveMinuteUsage._meta.get_field("facade").related_model._meta.db_table  # usage never imports gateway
        statement = sql.with_facade_names(statement, facades)
        names.append("facade_name")
    if per_project:
        statement = sql.per_project(statement, group_by, *_project_keys(), _project_model()._meta.db_table)
        names = ["span", "project_id", "public_id", "name", *COUNTERS]
    return _Read(statement, params, names, group_by)


def _fetch_serial(statement: str, params: list) -> list[tuple]:
    """One read without parallel workers on PostgreSQL (see _fetch_serial_many)."""
    return _fetch_serial_many([(statement, params)])[0]


def _fetch_serial_many(reads: list[tuple[str, list]]) -> list[list[tuple]]:
    """Run reads without parallel workers on PostgreSQL, each read's rows in order. These reads take
    milliseconds; the planner still picks a Parallel Append over the segments for network-wide
    ones, and starting and gathering workers cost more than the scan (EXPLAIN ANALYZE,
    bench/dashboard.py). The setting is transaction-local and put back as it was when the caller's
    transaction goes on."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            results = []
            for statement, params in reads:
                cursor.execute(statement, params)
                results.append(cursor.fetchall())
            return results
    if connection.get_autocommit() and not connection.in_atomic_block:
        # Outside a transaction (a page, the API): one round trip for all of them (BEGIN, the
        # setting, the reads, COMMIT), not one per statement. Django's cursors bind parameters on the
        # client, so they go as one text; the cursor starts on the BEGIN's result, the first read's
        # is the third.
        text = "; ".join(["BEGIN", sql.NO_PARALLEL_WORKERS_IN_TRANSACTION, *(s for s, _ in reads), "COMMIT"])
        with connection.cursor() as cursor:
            try:
                cursor.execute(text, [p for _, params in reads for p in params])
            except Exception:
                # The statements after the failing one, COMMIT too, did not run: end the transaction
                # (on a connection that broke, the ROLLBACK fails too; the read's own error is raised).
                with contextlib.suppress(Exception):
                    cursor.execute("ROLLBACK")
                raise
            cursor.nextset()
            results = []
            for _ in reads:
                cursor.nextset()
                results.append(cursor.fetchall())
            return results
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.NO_PARALLEL_WORKERS)
        previous = cursor.fetchone()[0]
        results = []
        for statement, params in reads:
            cursor.execute(statement, params)
            results.append(cursor.fetchall())
        if nested:
            cursor.execute(sql.SET_PARALLEL_WORKERS, [previous])
    return results


def _per(rows: list[dict], column: str, span: int = 0) -> dict[int, "Totals"]:
    return {row[column]: Totals.of(row) for row in rows if row["span"] == span}


def totals_between(start: datetime, end: datetime, user_id: int | None = None,
                   rolled_through: datetime | None = None, key_id: int | None = None,
                   project_id: int | None = None) -> Totals:
    total = Totals()
    for row in _sums([(start, end)], (), rolled_through or watermark(), user_id=user_id, key_id=key_id,
                     project_id=project_id):
        total += Totals.of(row)
    return total


def complete_through() -> datetime | None:
    return watermark()


@dataclass(frozen=True)
class Summary:
    window: Window
    totals: Totals
    previous: Totals
    complete_through: datetime | None


def summary(window: Window, user_id: int | None = None, key_id: int | None = None,
            project_id: int | None = None) -> Summary:
    """Network-wide, one user's (user_id), one API key's (key_id) or one project's (project_id)
    totals, and the previous window's."""
    rolled = watermark()
    spans = _sums([(window.start, window.end), (window.previous_start, window.previous_end)], (), rolled,
                  user_id=user_id, key_id=key_id, project_id=project_id)  # one statement for both windows
    totals = [Totals(), Totals()]
    for row in spans:
        totals[row["span"]] += Totals.of(row)
    return Summary(window, totals[0], totals[1], rolled)


@dataclass(frozen=True)
class DayPoint:
    date: date
    totals: Totals


def daily_series(window: Window, user_id: int | None = None, key_id: int | None = None,
                 project_id: int | None = None) -> list[DayPoint]:
    """One point per local day of the window, oldest first, zeros where empty."""
    return _day_points(window, _sums([(window.start, window.end)], ("bucket_start",), watermark(), "day", user_id,
                                     key_id, project_id=project_id))


def _day_points(window: Window, rows: list[dict]) -> list[DayPoint]:
    tz = zone()
    by_day: dict[date, list[int]] = {day: [0] * len(COUNTERS) for day in window.dates}
    for row in rows:
        sums = by_day.get(local_date(row["bucket_start"], tz))
        if sums is not None:  # summed as plain integers, one Totals a day (not one per row)
            for index, name in enumerate(COUNTERS):
                sums[index] += int(row[name] or 0)
    return [DayPoint(day, Totals(**dict(zip(COUNTERS, sums)))) for day, sums in by_day.items()]


@dataclass(frozen=True)
class FacadeRow:
    facade_id: int
    facade_name: str
    totals: Totals
    share: Decimal


def _share(part: int, whole: int) -> Decimal:
    return (Decimal(part) / whole).quantize(Decimal("0.0001")) if whole else Decimal(0)


def by_facade(window: Window, user_id: int | None = None, key_id: int | None = None,
              project_id: int | None = None) -> list[FacadeRow]:
    """Per facade, by spend (then name); share of spend, or of requests when nothing was spent."""
    rows = _sums([(window.start, window.end)], ("facade_id",), watermark(), user_id=user_id, key_id=key_id,
                 facade_names=True, project_id=project_id)
    return _facade_rows(rows)


def _facade_rows(rows: list[dict]) -> list[FacadeRow]:
    """FacadeRows of _sums rows grouped by facade_id (with facade names), span 0's."""
    per: dict[int, Totals] = {}
    names: dict[int, str] = {}
    for row in rows:
        if row["span"] == 0:
            per[row["facade_id"]] = per.get(row["facade_id"], Totals()) + Totals.of(row)
            names[row["facade_id"]] = row["facade_name"]
    total_cost = sum(t.cost_nanos for t in per.values())
    total_requests = sum(t.requests for t in per.values())
    rows = [FacadeRow(fid, names[fid], t,
                      _share(t.cost_nanos, total_cost) if total_cost else _share(t.requests, total_requests))
            for fid, t in per.items() if t.requests or t.cost_nanos]
    return sorted(rows, key=lambda r: (-r.totals.cost_nanos, r.facade_name))


@dataclass(frozen=True)
class Page:
    """What a usage page shows, read together (page_reads)."""

    summary: Summary
    facades: list[FacadeRow]
    keys: list["KeyRow"] | None
    series: list[DayPoint]


def page_reads(window: Window, user_id: int | None = None, key_id: int | None = None, project_id: int | None = None,
               with_keys: bool = False) -> Page:
    """What a usage page reads, in one round trip after one watermark read: the summary (both
    windows) and the per-model table from one statement (the rows summed per facade — or, `with_keys`,
    per facade and key, for the per-key table — then added up here), and the daily series from another."""
    rolled = watermark()
    group = ("facade_id", "key_id") if with_keys else ("facade_id",)
    scope = {"user_id": user_id, "key_id": key_id, "project_id": project_id}
    reads = [_sums_read([(window.start, window.end), (window.previous_start, window.previous_end)], group, rolled,
                        facade_names=True, **scope),
             _sums_read([(window.start, window.end)], ("bucket_start",), rolled, "day", **scope)]
    fetched = _fetch_serial_many([(r.statement, r.params) for r in reads])
    rows = reads[0].rows(fetched[0])
    totals = [Totals(), Totals()]
    for row in rows:
        totals[row["span"]] += Totals.of(row)
    keys = None
    if with_keys:
        per: dict[int, Totals] = {}
        for row in rows:
            if row["span"] == 0:
                per[row["key_id"]] = per.get(row["key_id"], Totals()) + Totals.of(row)
        keys = _key_rows(_used(per))
    series = _day_points(window, reads[1].rows(fetched[1]))
    return Page(Summary(window, totals[0], totals[1], rolled), _facade_rows(rows), keys, series)


@dataclass(frozen=True)
class KeyName:
    """How an API key is named wherever usage is listed: its prefix and name, its owner, and whether
    it is the owner's reserved key (usage from before per-key accounting)."""

    key_id: int
    prefix: str
    name: str
    user_id: int
    username: str
    reserved: bool


def key_names(key_ids) -> dict[int, KeyName]:
    rows = _key_model().objects.filter(pk__in=list(key_ids)).values_list("pk", "prefix", "name", "digest", "user_id",
                                                                    "user__username")
    return {pk: KeyName(pk, prefix, name, uid, username, is_reserved(digest, uid))
            for pk, prefix, name, digest, uid, username in rows}


@dataclass(frozen=True)
class KeyRow:
    key_id: int
    prefix: str
    name: str
    user_id: int
    username: str
    reserved: bool
    totals: Totals
    share: Decimal

    @property
    def label(self) -> str:
        return label(self.prefix, self.name, self.reserved)


def _per_key(start: datetime, end: datetime, rolled_through: datetime | None,
             user_id: int | None = None, project_id: int | None = None) -> dict[int, Totals]:
    return _used(_per(_sums([(start, end)], ("key_id",), rolled_through, user_id=user_id, project_id=project_id),
                      "key_id"))


def _used(per: dict[int, Totals]) -> dict[int, Totals]:
    return {ident: t for ident, t in per.items() if t.requests or t.cost_nanos or t.tokens}


def by_key(window: Window, user_id: int | None = None, project_id: int | None = None) -> list[KeyRow]:
    """Per API key (of one user, of one project, or everyone's), by spend then prefix; share of
    spend, or of requests when nothing was spent. The reserved key of a user holds their usage from
    before per-key accounting (it is in the Default project)."""
    return _key_rows(_per_key(window.start, window.end, watermark(), user_id, project_id))


def _key_rows(per: dict[int, Totals]) -> list[KeyRow]:
    infos = key_names(per)
    total_cost = sum(t.cost_nanos for t in per.values())
    total_requests = sum(t.requests for t in per.values())
    rows = []
    for kid, t in per.items():
        info = infos[kid]
        rows.append(KeyRow(kid, info.prefix, info.name, info.user_id, info.username, info.reserved, t,
                           _share(t.cost_nanos, total_cost) if total_cost else _share(t.requests, total_requests)))
    return sorted(rows, key=lambda r: (-r.totals.cost_nanos, r.prefix))


@dataclass(frozen=True)
class ProjectRow:
    project_id: int
    public_id: str
    name: str
    totals: Totals
    share: Decimal


def _per_project(start: datetime, end: datetime, rolled_through: datetime | None) -> dict[int, Totals]:
    return _used(_per(_sums([(start, end)], ("key_id",), rolled_through, per_project=True), "project_id"))


def by_project(window: Window) -> list[ProjectRow]:
    """Per project (its keys' usage), by spend then public id; share of spend, or of requests when
    nothing was spent. Projects without usage in the window are left out, as keys are by by_key."""
    per: dict[int, Totals] = {}
    names: dict[int, tuple[str, str]] = {}
    for row in _sums([(window.start, window.end)], ("key_id",), watermark(), per_project=True):
        per[row["project_id"]] = Totals.of(row)
        names[row["project_id"]] = (row["public_id"], row["name"])
    per = _used(per)
    total_cost = sum(t.cost_nanos for t in per.values())
    total_requests = sum(t.requests for t in per.values())
    rows = [ProjectRow(pid, *names[pid], t,
                       _share(t.cost_nanos, total_cost) if total_cost else _share(t.requests, total_requests))
            for pid, t in per.items()]
    return sorted(rows, key=lambda r: (-r.totals.cost_nanos, r.public_id))


@dataclass(frozen=True)
class LeaderRow:
    """A ranked user (group "user"), a ranked API key with its owner (group "key": key_id set), or a
    ranked project (group "project": project_id set, user_id None)."""

    rank: int
    previous_rank: int | None
    user_id: int | None
    username: str
    totals: Totals
    share: Decimal
    key_id: int | None = None
    prefix: str = ""
    name: str = ""
    reserved: bool = False
    project_id: int | None = None
    public_id: str = ""

    @property
    def label(self) -> str:
        return label(self.prefix, self.name, self.reserved)


def _per_user(start: datetime, end: datetime, rolled_through: datetime | None) -> dict[int, Totals]:
    return _used(_per(_sums([(start, end)], ("user_id",), rolled_through), "user_id"))


def _per_group(group: str, start: datetime, end: datetime, rolled_through: datetime | None) -> dict[int, Totals]:
    if group not in LEADERBOARD_GROUPS:
        raise ValueError(f"unknown grouping {group!r}; use one of {', '.join(LEADERBOARD_GROUPS)}")
    return {"key": _per_key, "project": _per_project, "user": _per_user}[group](start, end, rolled_through)


def _per_group_both(group: str, window: Window, rolled_through: datetime | None) -> tuple[dict, dict]:
    """_per_group over the window and over the previous window, in one statement."""
    if group not in LEADERBOARD_GROUPS:
        raise ValueError(f"unknown grouping {group!r}; use one of {', '.join(LEADERBOARD_GROUPS)}")
    spans = [(window.start, window.end), (window.previous_start, window.previous_end)]
    if group == "project":
        rows = _sums(spans, ("key_id",), rolled_through, per_project=True)
        column = "project_id"
    else:
        column = "key_id" if group == "key" else "user_id"
        rows = _sums(spans, (column,), rolled_through)
    return _used(_per(rows, column, 0)), _used(_per(rows, column, 1))


def _ranked(per: dict[int, Totals], by: str) -> list[tuple[int, Totals]]:
    return sorted(per.items(), key=lambda item: (-item[1].metric(by), item[0]))


def leaderboard(window: Window, by: str = "tokens", limit: int | None = None, offset: int = 0,
                group: str = "user") -> list[LeaderRow]:
    """Users (or API keys, group="key", or projects, group="project") ranked by tokens, spend or
    requests (ties by id), with last window's rank."""
    if by not in LEADERBOARD_METRICS:
        raise ValueError(f"unknown ranking {by!r}; use one of {', '.join(LEADERBOARD_METRICS)}")
    now, before = _per_group_both(group, window, watermark())
    ranked = _ranked(now, by)
    previous = {ident: rank for rank, (ident, _) in enumerate(_ranked(before, by), 1)}
    whole = sum(t.metric(by) for _, t in ranked)
    page = ranked[offset : None if limit is None else offset + limit]
    if group == "key":
        infos = key_names(kid for kid, _ in page)
        return [LeaderRow(offset + i, previous.get(kid), infos[kid].user_id, infos[kid].username, t,
                          _share(t.metric(by), whole), key_id=kid, prefix=infos[kid].prefix, name=infos[kid].name,
                          reserved=infos[kid].reserved)
                for i, (kid, t) in enumerate(page, 1)]
    if group == "project":
        projects = {pk: (public_id, name) for pk, public_id, name in _project_model().objects.filter(
            pk__in=[pid for pid, _ in page]).values_list("pk", "public_id", "name")}
        return [LeaderRow(offset + i, previous.get(pid), None, "", t, _share(t.metric(by), whole), project_id=pid,
                          public_id=projects[pid][0], name=projects[pid][1])
                for i, (pid, t) in enumerate(page, 1)]
    names = dict(get_user_model().objects.filter(pk__in=[uid for uid, _ in page]).values_list("pk", "username"))
    return [LeaderRow(offset + i, previous.get(uid), uid, names.get(uid, f"#{uid}"), t, _share(t.metric(by), whole))
            for i, (uid, t) in enumerate(page, 1)]


def leaderboard_count(window: Window, group: str = "user") -> int:
    return len(_per_group(group, window.start, window.end, watermark()))


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
            for row in _sums([(start, end)], ("user_id",), watermark(), user_ids=user_ids)}


def spend_by_key(start: datetime | None, end: datetime, key_ids: set[int]) -> dict[int, int]:
    """Each of these keys' exact spend over [start, end) (start None: since the beginning); read
    through their owners' rows (the per-user index), then picked."""
    if not key_ids or (start is None and (start := _since_the_beginning()) is None):
        return {}
    owners = set(_key_model().objects.filter(pk__in=key_ids).values_list("user_id", flat=True))
    if not owners:
        return {}
    return {row["key_id"]: int(row["cost_nanos"] or 0)
            for row in _sums([(start, end)], ("key_id",), watermark(), user_ids=owners) if row["key_id"] in key_ids}


def spend_by_project(start: datetime | None, end: datetime, project_ids: set[int]) -> dict[int, int]:
    """Each of these projects' exact spend over [start, end): its keys' (start None: since the beginning)."""
    if not project_ids or (start is None and (start := _since_the_beginning()) is None):
        return {}
    rolled = watermark()
    return {pid: sum(int(row["cost_nanos"] or 0) for row in _sums([(start, end)], (), rolled, project_id=pid))
            for pid in sorted(project_ids)}
