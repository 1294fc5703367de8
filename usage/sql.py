"""Every raw SQL statement of the usage app, with bound parameters.

Table names come from the fixed LEVEL_TABLES mapping below, never from input. Each statement
runs unchanged on PostgreSQL and SQLite (both accept `%s` through Django's cursor and psycopg,
and both support INSERT ... ON CONFLICT DO UPDATE with EXCLUDED).
"""

import functools
from datetime import datetime

from usage.counters import COUNTERS

LEVEL_TABLES = {
    "5min": "usage_bucket_5min",
    "hour": "usage_bucket_hour",
    "day": "usage_bucket_day",
    "month": "usage_bucket_month",
}

KEY_COLUMNS = ("bucket_start", "user_id", "key_id", "facade_id")
CONFLICT_KEY = "(bucket_start, user_id, key_id, facade_id)"


def _level_table(table: str) -> str:
    """A table name that may be formatted into SQL: one of LEVEL_TABLES, never anything else
    (a real check, not an assert that `python -O` would remove)."""
    if table not in LEVEL_TABLES.values():
        raise ValueError(f"{table!r} is not a usage level table")
    return table


def literal(value) -> str:
    """A ledger statement's parameter as SQL text, for the gateway's batches, which go as one text
    of several statements (usage.ledger.writers.PostgresWriter). Only what those statements bind: integers
    and aware datetimes (a TypeError for anything else, so no string ever reaches SQL text)."""
    if type(value) is int:  # most of them (a batch's counters and ids)
        return str(value)
    if isinstance(value, int):
        return str(int(value))  # bool too: 1 or 0
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return _timestamp(value)
    raise TypeError(f"a ledger statement binds integers and aware datetimes only, not {type(value).__name__}")


@functools.lru_cache(maxsize=64)
def _timestamp(value: datetime) -> str:
    """A bucket start as SQL (the same few for minutes on end: written once each)."""
    return f"'{value.isoformat()}'::timestamptz"


def render(statements: list[tuple[str, list]], prepared: dict[str, str] | None = None) -> str:
    """Statements with `%s` placeholders and their parameters as one text, values inlined
    (literal). A statement whose text is in `prepared` (text -> name) becomes EXECUTE name(...)."""
    parts = []
    for text, params in statements:
        values = [literal(value) for value in params]
        name = prepared.get(text) if prepared else None
        if name:
            parts.append(f"EXECUTE {name}({', '.join(values)})" if values else f"EXECUTE {name}")
        else:
            parts.append(text % tuple(values))
    return "; ".join(parts)


def prepare(name: str, text: str) -> str:
    """PREPARE `name` for a statement written with `%s` placeholders (they become $1, $2, ...)."""
    pieces = text.split("%s")
    numbered = pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], start=1))
    return f"PREPARE {name} AS {numbered}"


def _row_count(rows: int) -> int:
    if rows < 1:
        raise ValueError("a statement needs at least one row")
    return rows
ROW_WIDTH = len(KEY_COLUMNS) + len(COUNTERS)


@functools.lru_cache(maxsize=64)
def add_counters(table: str, rows: int) -> str:
    """Multi-row additive UPSERT: `x = table.x + EXCLUDED.x` for every counter.

    PostgreSQL refuses the same key twice in one statement, so callers merge deltas that share
    a key first (usage.ledger.delta.merge_deltas).
    """
    table, rows = _level_table(table), _row_count(rows)
    columns = ", ".join(KEY_COLUMNS + COUNTERS)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * ROW_WIDTH) + ")"] * rows)
    updates = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in COUNTERS)
    return (
        f"INSERT INTO {table} ({columns}) VALUES {placeholders} "
        f"ON CONFLICT {CONFLICT_KEY} DO UPDATE SET {updates}"
    )


# --- exact reads: a window's segments summed in one statement (usage.reads.engine) ------------------


def _grouping(group_by: tuple[str, ...], *also: str) -> tuple[str, ...]:
    for column in group_by:
        if column not in KEY_COLUMNS and column not in also:
            raise ValueError(f"{column!r} is not a bucket key column")
    return group_by


def _identifier(name: str) -> str:
    """A table or column name from a model's _meta (never from input), checked before it is formatted into SQL."""
    if not name.isidentifier():
        raise ValueError(f"{name!r} is not an SQL identifier")
    return name


# A project's rows are its keys' rows (a key never changes project: no project column in the
# buckets), picked in the read's own statement. On PostgreSQL `key_id IN (SELECT ...)` is planned as
# a semi-join: every row of the segment's range is read, then matched against the keys, as costly as
# a network-wide read; an array of the keys (an InitPlan, run once per segment) is an index condition
# on (key_id, bucket_start), so only the project's rows are read (bench/dashboard.py). SQLite has no
# arrays, and looks up each key of an IN list in that index anyway.
PROJECT_KEYS_FILTER = {
    "postgresql": " AND key_id = ANY(ARRAY(SELECT id FROM {table} WHERE {column} {match}))",
    "sqlite": " AND key_id IN (SELECT id FROM {table} WHERE {column} {match})",
}


def _integers(ids) -> str:
    """Ids written inline (a long list must not exhaust SQLite's parameters): integers only, at least one."""
    if not ids:
        raise ValueError("an IN list needs at least one id")
    return ", ".join(str(int(i)) for i in sorted(ids))


def segment_filters(user_id: int | None = None, key_id: int | None = None, user_ids: set[int] | None = None,
                    project_id: int | None = None, project_keys: tuple[str, str] | None = None,
                    vendor: str = "postgresql", key_ids: set[int] | None = None, facade_ids: set[int] | None = None,
                    project_ids: set[int] | None = None) -> tuple[str, list]:
    """The WHERE conditions a read adds to every segment, and their parameters. `project_id` (or
    `project_ids`) keeps the rows of the project's keys; `project_keys` names the key table and its
    project column."""
    where, params = "", []
    if user_id is not None:
        where, params = where + " AND user_id = %s", params + [user_id]
    if key_id is not None:
        where, params = where + " AND key_id = %s", params + [key_id]
    for column, ids in (("user_id", user_ids), ("key_id", key_ids), ("facade_id", facade_ids)):
        if ids is not None:
            where += f" AND {column} IN ({_integers(ids)})"
    if project_id is not None or project_ids is not None:
        table, column = (_identifier(name) for name in project_keys)
        match = "= %s" if project_id is not None else f"IN ({_integers(project_ids)})"
        where += PROJECT_KEYS_FILTER[vendor].format(table=table, column=column, match=match)
        params = params + ([project_id] if project_id is not None else [])
    return where, params


def segment_sums(span: int, table: str, group_by: tuple[str, ...], where: str) -> str:
    """One segment of one span: its level's rows in [%s, %s), summed per group."""
    picked = ", ".join((*_grouping(group_by), *(f"SUM({c}) AS {c}" for c in COUNTERS)))
    grouped = f" GROUP BY {', '.join(group_by)}" if group_by else ""
    return (f"SELECT {int(span)} AS span, {picked} FROM {_level_table(table)} "
            f"WHERE bucket_start >= %s AND bucket_start < %s{where}{grouped}")


def segment_sums_per_project(span: int, table: str, group_by: tuple[str, ...], where: str, key_table: str,
                             project_column: str) -> str:
    """segment_sums with each row's key replaced by the key's project (group_by names key_id): the
    same columns, `project_id` in the place of `key_id`, so the database sums a read per project
    in one pass instead of returning one row per key."""
    if "key_id" not in _grouping(group_by):
        raise ValueError("sums per project are made from rows per key")
    key_table, project_column = _identifier(key_table), _identifier(project_column)
    columns = [f"k.{project_column}" if column == "key_id" else f"b.{column}" for column in group_by]
    picked = ", ".join((*(f"{c} AS project_id" if c.startswith("k.") else c for c in columns),
                        *(f"SUM(b.{c}) AS {c}" for c in COUNTERS)))
    rows = (f"SELECT * FROM {_level_table(table)} WHERE bucket_start >= %s AND bucket_start < %s{where}")
    return (f"SELECT {int(span)} AS span, {picked} FROM ({rows}) b JOIN {key_table} k ON k.id = b.key_id "
            f"GROUP BY {', '.join(columns)}")


def sums_of_segments(parts: list[str], group_by: tuple[str, ...]) -> str:
    """The segments' sums summed again per span and group (group_by: bucket key columns, or
    project_id in key_id's place, see segment_sums_per_project)."""
    grouping = ", ".join(("s.span", *(f"s.{column}" for column in _grouping(group_by, "project_id"))))
    sums = ", ".join(f"SUM(s.{c}) AS {c}" for c in COUNTERS)
    return f"SELECT {grouping}, {sums} FROM ({' UNION ALL '.join(parts)}) s GROUP BY {grouping}"


def with_facade_names(statement: str, facade_table: str) -> str:
    return f"SELECT t.*, f.name AS facade_name FROM ({statement}) t JOIN {facade_table} f ON f.id = t.facade_id"


def per_project(statement: str, group_by: tuple[str, ...], key_table: str, project_column: str,
                project_table: str) -> str:
    """`statement` (sums per span and key_id, see sums_of_segments) summed again per project of
    those keys, with the project's public id and name: span, project_id, public_id, name, the counters."""
    if "key_id" not in _grouping(group_by):
        raise ValueError("sums per project are made from sums per key")
    key_table, project_column, project_table = (_identifier(n) for n in (key_table, project_column, project_table))
    sums = ", ".join(f"SUM(t.{c}) AS {c}" for c in COUNTERS)
    return (f"SELECT t.span, p.id AS project_id, p.public_id, p.name, {sums} FROM ({statement}) t "
            f"JOIN {key_table} k ON k.id = t.key_id JOIN {project_table} p ON p.id = k.{project_column} "
            "GROUP BY t.span, p.id, p.public_id, p.name")


# PostgreSQL: these reads are short, and starting parallel workers costs more than the
# scan (usage.reads.engine.fetch_serial). Transaction-local; the previous value is read to restore it.
NO_PARALLEL_WORKERS = ("SELECT current_setting('max_parallel_workers_per_gather'), "
                       "set_config('max_parallel_workers_per_gather', '0', true)")
SET_PARALLEL_WORKERS = "SELECT set_config('max_parallel_workers_per_gather', %s, true)"
NO_PARALLEL_WORKERS_IN_TRANSACTION = "SET LOCAL max_parallel_workers_per_gather = 0"  # until the transaction ends


# --- usage without a key: the reserved keys (usage.reserved) ------------------------------------

def ensure_reserved_keys(table: str, rows: int) -> str:
    """Create the reserved keys of `rows` users unless they exist (the digest is unique)."""
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * _row_count(rows))
    return (f"INSERT INTO {table} (user_id, name, prefix, digest, created_at, revoked_at) VALUES {values} "
            "ON CONFLICT (digest) DO NOTHING")


def reserved_key_ids(table: str, rows: int) -> str:
    return f"SELECT user_id, id FROM {table} WHERE digest IN ({', '.join(['%s'] * _row_count(rows))})"


# --- degraded mode: exactly-once replay -------------------------------------------------------

APPLIED_DELTA_TABLE = "usage_applied_delta"


def claim_delta_ids(rows: int) -> str:
    """Insert delta ids; RETURNING names only the ids inserted now, i.e. never applied before.

    A concurrent drainer inserting the same id waits on the unique index until the first
    transaction ends, then finds the conflict: each id is returned to exactly one transaction.
    """
    values = ", ".join(["(%s, %s)"] * _row_count(rows))
    return (
        f"INSERT INTO {APPLIED_DELTA_TABLE} (delta_id, applied_at) VALUES {values} "
        "ON CONFLICT (delta_id) DO NOTHING RETURNING delta_id"
    )


# PostgreSQL only: the fate of a transaction whose id was read before COMMIT (see LOCK_WATERMARK_FOR_WRITE).
TXID_STATUS = "SELECT txid_status(%s)"

PRUNE_APPLIED_DELTA_IDS = f"DELETE FROM {APPLIED_DELTA_TABLE} WHERE applied_at < %s"


# --- rollups: the watermark, recomputation from the finer level, late data, retention ----------

STATE_TABLE = "usage_rollup_state"

# On PostgreSQL, ledger writes and rollups are ordered by a transaction-level advisory lock on this
# key ("cv:wmark" as a bigint), not by a lock on the watermark's row: every write holds it shared
# (SHARE_WATERMARK), a rollup exclusively (EXCLUDE_WATERMARK_WRITERS), each until its transaction
# ends. A row lock did the same, but rows share-locked by several transactions at once (each
# gateway worker's armed transaction, usage.ledger.writers.PostgresWriter) are locked through a new
# MultiXact per lock, with every holder as a member: one a batch, per worker, so the
# database's MultiXact space (and its member space, which grows with the number of holders) ran
# towards forced anti-wraparound vacuums of every table, or at worst refused writes. An advisory
# lock lives in the lock table only: nothing is written for it.
WATERMARK_LOCK_KEY = 7166980141617345131
SHARE_WATERMARK = {"postgresql": f"SELECT pg_advisory_xact_lock_shared({WATERMARK_LOCK_KEY})", "sqlite": None}
EXCLUDE_WATERMARK_WRITERS = {"postgresql": f"SELECT pg_advisory_xact_lock({WATERMARK_LOCK_KEY})", "sqlite": None}
# Every ledger write begins here, after SHARE_WATERMARK, in a statement of its own: under READ
# COMMITTED each statement reads from a snapshot taken as it starts, so the watermark is read once
# the lock is held (a rollup that held it has committed its watermark). The transaction id read
# here lets a cut COMMIT be resolved with txid_status(). SQLite's write lock serialises anyway.
LOCK_WATERMARK_FOR_WRITE = {
    "postgresql": f"SELECT txid_current(), (SELECT watermark FROM {STATE_TABLE} WHERE id = 1)",
    "sqlite": f"SELECT NULL, (SELECT watermark FROM {STATE_TABLE} WHERE id = 1)",
}
READ_WATERMARK = f"SELECT watermark FROM {STATE_TABLE} WHERE id = 1"
# After EXCLUDE_WATERMARK_WRITERS (PostgreSQL): the row lock keeps the watermark's own updates in order.
LOCK_WATERMARK_FOR_ROLLUP = {
    "postgresql": f"SELECT watermark, time_zone FROM {STATE_TABLE} WHERE id = 1 FOR UPDATE",
    "sqlite": f"SELECT watermark, time_zone FROM {STATE_TABLE} WHERE id = 1",
}
ENSURE_STATE = (f"INSERT INTO {STATE_TABLE} (id, watermark, time_zone, updated_at) VALUES (1, NULL, %s, %s) "
                "ON CONFLICT (id) DO NOTHING")
SET_WATERMARK = f"UPDATE {STATE_TABLE} SET watermark = %s, time_zone = %s, updated_at = %s WHERE id = 1"
EARLIEST_5MIN = "SELECT MIN(bucket_start) FROM usage_bucket_5min"
NEXT_5MIN_FROM = "SELECT MIN(bucket_start) FROM usage_bucket_5min WHERE bucket_start >= %s"


def roll_from(target: str, source: str) -> str:
    """Recompute one period of `target` from `source` rows in [start, end): idempotent (x = EXCLUDED.x)."""
    target, source = _level_table(target), _level_table(source)
    columns = ", ".join(KEY_COLUMNS + COUNTERS)
    sums = ", ".join(f"SUM({c})" for c in COUNTERS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COUNTERS)
    return (
        f"INSERT INTO {target} ({columns}) SELECT %s, user_id, key_id, facade_id, {sums} FROM {source} "
        "WHERE bucket_start >= %s AND bucket_start < %s GROUP BY user_id, key_id, facade_id "
        f"ON CONFLICT {CONFLICT_KEY} DO UPDATE SET {updates}"
    )


def delete_range(table: str) -> str:
    return f"DELETE FROM {_level_table(table)} WHERE bucket_start >= %s AND bucket_start < %s"


def delete_before(table: str) -> str:
    return f"DELETE FROM {_level_table(table)} WHERE bucket_start < %s"


def group_rows(source: str) -> str:
    """A period's rows of `source`, one by one: the rollup's way round a sum past 2**63."""
    return (f"SELECT user_id, key_id, facade_id, {', '.join(COUNTERS)} FROM {_level_table(source)} "
            "WHERE bucket_start >= %s AND bucket_start < %s")


@functools.lru_cache(maxsize=64)
def set_counters(table: str, rows: int) -> str:
    """Multi-row UPSERT that sets the counters (`x = EXCLUDED.x`), as roll_from does, from values."""
    table, rows = _level_table(table), _row_count(rows)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * ROW_WIDTH) + ")"] * rows)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COUNTERS)
    return (f"INSERT INTO {table} ({', '.join(KEY_COLUMNS + COUNTERS)}) VALUES {placeholders} "
            f"ON CONFLICT {CONFLICT_KEY} DO UPDATE SET {updates}")
