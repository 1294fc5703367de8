"""Every raw SQL statement of the usage app, with bound parameters.

Table names come from the fixed LEVEL_TABLES mapping below, never from input. Each statement
runs unchanged on PostgreSQL and SQLite (both accept `%s` through Django's cursor and psycopg,
and both support INSERT ... ON CONFLICT DO UPDATE with EXCLUDED).
"""

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


def _row_count(rows: int) -> int:
    if rows < 1:
        raise ValueError("a statement needs at least one row")
    return rows
ROW_WIDTH = len(KEY_COLUMNS) + len(COUNTERS)


def add_counters(table: str, rows: int) -> str:
    """Multi-row additive UPSERT: `x = table.x + EXCLUDED.x` for every counter.

    PostgreSQL refuses the same key twice in one statement, so callers merge deltas that share
    a key first (usage.ledger.merge_deltas).
    """
    table, rows = _level_table(table), _row_count(rows)
    columns = ", ".join(KEY_COLUMNS + COUNTERS)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * ROW_WIDTH) + ")"] * rows)
    updates = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in COUNTERS)
    return (
        f"INSERT INTO {table} ({columns}) VALUES {placeholders} "
        f"ON CONFLICT {CONFLICT_KEY} DO UPDATE SET {updates}"
    )


# --- usage without a key: one reserved, never-usable key per user ------------------------------

# Usage recorded before per-key accounting, and deltas buffered or logged without a key, belong
# to a reserved key of their user: revoked from birth, its digest not a SHA-256 hex digest (so no
# presented key can match it), its prefix not `cvk_` (so no real key's prefix can equal it).
# The same rows are made by the migration that added the key to the buckets.
RESERVED_KEY_NAME = "before per-key accounting"


def reserved_key_digest(user_id: int) -> str:
    return f"reserved:{user_id}"


def reserved_key_prefix(user_id: int) -> str:
    return f"pre-{user_id}"


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

# Every ledger write begins here. On PostgreSQL the share lock orders the write against a rollup
# (which takes FOR UPDATE before it aggregates), and the transaction id read in the same round
# trip lets a cut COMMIT be resolved with txid_status(). SQLite's write lock serialises anyway.
LOCK_WATERMARK_FOR_WRITE = {
    "postgresql": f"SELECT txid_current(), (SELECT watermark FROM {STATE_TABLE} WHERE id = 1 FOR SHARE)",
    "sqlite": f"SELECT NULL, (SELECT watermark FROM {STATE_TABLE} WHERE id = 1)",
}
READ_WATERMARK = f"SELECT watermark FROM {STATE_TABLE} WHERE id = 1"
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
