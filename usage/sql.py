"""Every raw SQL statement of the usage app, with bound parameters.

Table names come from the fixed LEVEL_TABLES mapping below, never from input. Each statement
runs unchanged on PostgreSQL and SQLite (both accept `%s` through Django's cursor and psycopg,
and both support INSERT ... ON CONFLICT DO UPDATE with EXCLUDED).
"""

COUNTERS = (
    "requests",
    "error_requests",
    "estimated_requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_nanos",
)

LEVEL_TABLES = {
    "5min": "usage_bucket_5min",
    "hour": "usage_bucket_hour",
    "day": "usage_bucket_day",
    "month": "usage_bucket_month",
}

KEY_COLUMNS = ("bucket_start", "user_id", "facade_id")
ROW_WIDTH = len(KEY_COLUMNS) + len(COUNTERS)


def add_counters(table: str, rows: int) -> str:
    """Multi-row additive UPSERT: `x = table.x + EXCLUDED.x` for every counter.

    PostgreSQL refuses the same key twice in one statement, so callers merge deltas that share
    a key first (usage.ledger.merge_deltas).
    """
    assert table in LEVEL_TABLES.values(), table
    assert rows >= 1
    columns = ", ".join(KEY_COLUMNS + COUNTERS)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * ROW_WIDTH) + ")"] * rows)
    updates = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in COUNTERS)
    return (
        f"INSERT INTO {table} ({columns}) VALUES {placeholders} "
        f"ON CONFLICT (bucket_start, user_id, facade_id) DO UPDATE SET {updates}"
    )


# --- degraded mode: exactly-once replay -------------------------------------------------------

APPLIED_DELTA_TABLE = "usage_applied_delta"


def claim_delta_ids(rows: int) -> str:
    """Insert delta ids; RETURNING names only the ids inserted now, i.e. never applied before.

    A concurrent drainer inserting the same id waits on the unique index until the first
    transaction ends, then finds the conflict: each id is returned to exactly one transaction.
    """
    assert rows >= 1
    values = ", ".join(["(%s, %s)"] * rows)
    return (
        f"INSERT INTO {APPLIED_DELTA_TABLE} (delta_id, applied_at) VALUES {values} "
        "ON CONFLICT (delta_id) DO NOTHING RETURNING delta_id"
    )


# PostgreSQL only: the id of the writing transaction, read before COMMIT, and later its fate.
CURRENT_TXID = "SELECT txid_current()"
TXID_STATUS = "SELECT txid_status(%s)"

PRUNE_APPLIED_DELTA_IDS = f"DELETE FROM {APPLIED_DELTA_TABLE} WHERE applied_at < %s"
