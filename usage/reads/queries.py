"""Every read the usage pages and the API show: the 7/30/90-day windows, their totals, daily
series, per-model, per-key and per-project tables and the leaderboards. Exact at every moment: each
is read through usage.reads.engine (the coarsest rolled level for each part of a span, 5-minute
rows for the rest, every segment in one statement).
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.utils import timezone

from usage.calendar import hour_start, local_date, local_midnight, zone
from usage.counters import COUNTERS
from usage.reads.engine import Totals, fetch_serial_many, key_model, project_model, sums, sums_read
from usage.reserved import is_reserved, label
from usage.rollups import watermark

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


def _per(rows: list[dict], column: str, span: int = 0) -> dict[int, "Totals"]:
    return {row[column]: Totals.of(row) for row in rows if row["span"] == span}


def totals_between(start: datetime, end: datetime, user_id: int | None = None,
                   rolled_through: datetime | None = None, key_id: int | None = None,
                   project_id: int | None = None) -> Totals:
    total = Totals()
    for row in sums([(start, end)], (), rolled_through or watermark(), user_id=user_id, key_id=key_id,
                     project_id=project_id):
        total += Totals.of(row)
    return total


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
    spans = sums([(window.start, window.end), (window.previous_start, window.previous_end)], (), rolled,
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
    return _day_points(window, sums([(window.start, window.end)], ("bucket_start",), watermark(), "day",
                                    user_id=user_id, key_id=key_id, project_id=project_id))


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
    rows = sums([(window.start, window.end)], ("facade_id",), watermark(), user_id=user_id, key_id=key_id,
                 facade_names=True, project_id=project_id)
    return _facade_rows(rows)


def _facade_rows(rows: list[dict]) -> list[FacadeRow]:
    """FacadeRows of sums rows grouped by facade_id (with facade names), span 0's."""
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
    reads = [sums_read([(window.start, window.end), (window.previous_start, window.previous_end)], group, rolled,
                        facade_names=True, **scope),
             sums_read([(window.start, window.end)], ("bucket_start",), rolled, "day", **scope)]
    fetched = fetch_serial_many([(r.statement, r.params) for r in reads])
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

    @property
    def label(self) -> str:
        return label(self.prefix, self.name, self.reserved)


def key_names(key_ids) -> dict[int, KeyName]:
    rows = key_model().objects.filter(pk__in=list(key_ids)).values_list("pk", "prefix", "name", "digest", "user_id",
                                                                    "user__username")
    return {pk: KeyName(pk, prefix, name, uid, username, is_reserved(digest, uid))
            for pk, prefix, name, digest, uid, username in rows}


@dataclass(frozen=True)
class KeyRow(KeyName):
    """A key's usage in a table of keys: its totals and its share of the table's."""

    totals: Totals
    share: Decimal


def _per_key(start: datetime, end: datetime, rolled_through: datetime | None,
             user_id: int | None = None, project_id: int | None = None) -> dict[int, Totals]:
    return _used(_per(sums([(start, end)], ("key_id",), rolled_through, user_id=user_id, project_id=project_id),
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
    rows = [KeyRow(**vars(infos[kid]), totals=t,
                   share=_share(t.cost_nanos, total_cost) if total_cost else _share(t.requests, total_requests))
            for kid, t in per.items()]
    return sorted(rows, key=lambda r: (-r.totals.cost_nanos, r.prefix))


@dataclass(frozen=True)
class ProjectRow:
    project_id: int
    public_id: str
    name: str
    totals: Totals
    share: Decimal


def _per_project(start: datetime, end: datetime, rolled_through: datetime | None) -> dict[int, Totals]:
    return _used(_per(sums([(start, end)], ("key_id",), rolled_through, per_project=True), "project_id"))


def by_project(window: Window) -> list[ProjectRow]:
    """Per project (its keys' usage), by spend then public id; share of spend, or of requests when
    nothing was spent. Projects without usage in the window are left out, as keys are by by_key."""
    per: dict[int, Totals] = {}
    names: dict[int, tuple[str, str]] = {}
    for row in sums([(window.start, window.end)], ("key_id",), watermark(), per_project=True):
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
    return _used(_per(sums([(start, end)], ("user_id",), rolled_through), "user_id"))


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
        rows = sums(spans, ("key_id",), rolled_through, per_project=True)
        column = "project_id"
    else:
        column = "key_id" if group == "key" else "user_id"
        rows = sums(spans, (column,), rolled_through)
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
        projects = {pk: (public_id, name) for pk, public_id, name in project_model().objects.filter(
            pk__in=[pid for pid, _ in page]).values_list("pk", "public_id", "name")}
        return [LeaderRow(offset + i, previous.get(pid), None, "", t, _share(t.metric(by), whole), project_id=pid,
                          public_id=projects[pid][0], name=projects[pid][1])
                for i, (pid, t) in enumerate(page, 1)]
    names = dict(get_user_model().objects.filter(pk__in=[uid for uid, _ in page]).values_list("pk", "username"))
    return [LeaderRow(offset + i, previous.get(uid), uid, names.get(uid, f"#{uid}"), t, _share(t.metric(by), whole))
            for i, (uid, t) in enumerate(page, 1)]


def leaderboard_count(window: Window, group: str = "user") -> int:
    return len(_per_group(group, window.start, window.end, watermark()))
