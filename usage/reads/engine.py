"""The one way the ledger is read: exact counter sums over spans, in one statement.

A span [start, end) is read from the coarsest level rolled for each part of it — whole months,
then whole days, then hours, all before the watermark — and from 5-minute rows for the rest, so
every total equals the sum of every delta recorded, the current 5-minute bucket included,
whatever the state of the rollups. Every segment of every span of a read goes into ONE statement (a
UNION ALL of each segment's level rows, summed in the database): per-query overhead, not the
database, was most of a page's time. The pages (usage.reads.queries), the budgets' spend
(usage.reads.spend) and the OpenAI-shaped API (usage.reads.openai) all read through here.
"""

import contextlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction

from usage import sql
from usage.calendar import as_utc, day_bounds, month_bounds, next_hour, zone
from usage.counters import COUNTERS, Counters
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.money import nanos_to_usd


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


# --- gateway's models, reached through the bucket tables' foreign keys (usage never imports gateway) --


def key_model():
    return FiveMinuteUsage._meta.get_field("key").related_model  # gateway.ApiKey


def project_model():
    return key_model()._meta.get_field("project").related_model  # gateway.Project


def facade_model():
    return FiveMinuteUsage._meta.get_field("facade").related_model  # gateway.ModelFacade


def _project_keys() -> tuple[str, str]:
    """The key table and its project column, for the project filters (usage.sql.segment_filters)."""
    return key_model()._meta.db_table, key_model()._meta.get_field("project").column


# --- the single-statement sums ------------------------------------------------------------------


def sums(spans: list[tuple[datetime, datetime]], group_by: tuple[str, ...], rolled_through: datetime | None,
         coarsest: str = "month", *, facade_names: bool = False, per_project: bool = False,
         keys_to_projects: bool = False, **scope) -> list[dict]:
    """Counter sums per `group_by` columns (bucket key columns) and per span, over the segments of
    every span (see segments), read in one statement. Each row holds "span" (the index of its span
    in `spans`), the group_by values, the counters, and "facade_name" when `facade_names` (group_by
    has facade_id). `scope` keeps some rows (usage.sql.segment_filters: user_id, key_id, project_id,
    and sets of user_ids, key_ids, facade_ids, project_ids; a project's rows are its keys' rows);
    `per_project` (group_by ("key_id",)) sums the keys' rows per project instead, each row with
    "project_id", "public_id" and "name"; `keys_to_projects` (group_by has key_id, among others)
    sums them per project with the other columns kept, "project_id" in the place of "key_id"."""
    read = sums_read(spans, group_by, rolled_through, coarsest, facade_names=facade_names, per_project=per_project,
                     keys_to_projects=keys_to_projects, **scope)
    return read.rows(fetch_serial(read.statement, read.params)) if read else []


@dataclass(frozen=True)
class Read:
    """One sums statement, its parameters and how to name its rows."""

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


def sums_read(spans, group_by, rolled_through, coarsest="month", *, facade_names=False, per_project=False,
              keys_to_projects=False, **scope) -> Read | None:
    """sums' statement (None: no segment to read), for reads run together (fetch_serial_many)."""
    if per_project and group_by != ("key_id",):
        raise ValueError("per_project sums rows grouped by key_id alone")
    adapt = connection.ops.adapt_datetimefield_value
    by_project = scope.get("project_id") is not None or scope.get("project_ids") is not None
    where, where_params = sql.segment_filters(**scope, project_keys=_project_keys() if by_project else None,
                                              vendor=connection.vendor)
    parts, params = [], []
    for index, (start, end) in enumerate(spans):
        for model, a, b in segments(start, end, rolled_through, coarsest):
            table = model._meta.db_table
            parts.append(sql.segment_sums_per_project(index, table, group_by, where, *_project_keys())
                         if keys_to_projects else sql.segment_sums(index, table, group_by, where))
            params += [adapt(a), adapt(b), *where_params]
    if not parts:
        return None
    if keys_to_projects:
        group_by = tuple("project_id" if column == "key_id" else column for column in group_by)
    statement = sql.sums_of_segments(parts, group_by)
    names = ["span", *group_by, *COUNTERS]
    if facade_names:
        statement = sql.with_facade_names(statement, facade_model()._meta.db_table)
        names.append("facade_name")
    if per_project:
        statement = sql.per_project(statement, group_by, *_project_keys(), project_model()._meta.db_table)
        names = ["span", "project_id", "public_id", "name", *COUNTERS]
    return Read(statement, params, names, group_by)


def fetch_serial(statement: str, params: list) -> list[tuple]:
    """One read without parallel workers on PostgreSQL (see fetch_serial_many)."""
    return fetch_serial_many([(statement, params)])[0]


def fetch_serial_many(reads: list[tuple[str, list]]) -> list[list[tuple]]:
    """Run reads without parallel workers on PostgreSQL, each read's rows in order. These reads are
    short; the planner still picks a Parallel Append over the segments for network-wide ones, and
    starting and gathering workers cost more than the scan (EXPLAIN ANALYZE, bench/dashboard.py).
    The setting is transaction-local and put back as it was when the caller's transaction goes on."""
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
