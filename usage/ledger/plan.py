"""What a write does, once: the statements of one transaction (`write_plan`), and the synchronous
way to run them through Django's connection (`record` / `record_many`: commands, seeding, replays,
tests, SQLite's writer). The gateway's async writers (usage.ledger.writers) run the very same
statements."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from django.db import connections, transaction

from usage import sql
from usage.calendar import as_utc, day_bounds, hour_start, month_bounds, zone
from usage.ledger.delta import Key, UsageDelta, merge_deltas
from usage.models import FiveMinuteUsage
from usage.reserved import RESERVED_KEY_NAME, reserved_key_digest, reserved_key_prefix

# Rows per statement: 500 x 11 parameters stays far below SQLite's and PostgreSQL's limits.
ROWS_PER_STATEMENT = 500

Statement = tuple[str, list]


@dataclass(frozen=True)
class WritePlan:
    """The statements one write runs, in one transaction, in this order:

    1. `lock`: on PostgreSQL, take the watermark's lock shared (usage.sql.SHARE_WATERMARK); then
       read the rollup watermark, and on PostgreSQL the transaction id (the last statement's row).
    2. `upserts`: add every delta to its 5-minute bucket.
    3. `late(watermark)`: a delta whose bucket lies before the watermark is also added, additively,
       to every coarser bucket already rolled (its hour; its day and month once those have ended
       by the watermark), so it is visible at every level at once and no rolled period is ever
       recomputed from 5-minute rows that retention may have pruned.
    """

    lock: list[Statement]
    upserts: list[Statement]
    rows: list[tuple[Key, list[int]]]

    def late(self, locked: list | None) -> list[Statement]:
        watermark = as_utc(locked[0][1]) if locked else None
        late = [(key, counters) for key, counters in self.rows if watermark is not None and key[0] < watermark]
        if not late:
            return []
        tz = zone()
        levels: dict[str, dict[Key, list[int]]] = {"hour": {}, "day": {}, "month": {}}
        for (bucket_start, user_id, key_id, facade_id), counters in late:
            targets = {"hour": hour_start(bucket_start, tz)}
            day_start, day_end = day_bounds(bucket_start, tz)
            if day_end <= watermark:
                targets["day"] = day_start
            month_start, month_end = month_bounds(bucket_start, tz)
            if month_end <= watermark:
                targets["month"] = month_start
            for level, start in targets.items():
                key = (start, user_id, key_id, facade_id)
                known = levels[level].get(key)
                levels[level][key] = counters if known is None else [a + b for a, b in zip(known, counters)]
        return [statement for level, merged in levels.items()
                for statement in _add_rows(sql.LEVEL_TABLES[level], sorted(merged.items()))]


def lock_statements(vendor: str) -> list[Statement]:
    """A write's first statements (WritePlan.lock): the watermark's shared lock where the database
    has one, then the watermark and the transaction id, read once the lock is held."""
    share = sql.SHARE_WATERMARK[vendor]
    return [*([(share, [])] if share else []), (sql.LOCK_WATERMARK_FOR_WRITE[vendor], [])]


def write_plan(deltas: Iterable[UsageDelta], vendor: str = "postgresql") -> WritePlan:
    rows = list(merge_deltas(deltas).items())
    return WritePlan(lock_statements(vendor), _add_rows(sql.LEVEL_TABLES["5min"], rows), rows)


def _add_rows(table: str, rows: list) -> list[Statement]:
    statements = []
    for offset in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[offset : offset + ROWS_PER_STATEMENT]
        params: list = []
        for key, counters in chunk:
            params += [*key, *counters]
        statements.append((sql.add_counters(table, len(chunk)), params))
    return statements


def reserved_key_statements(deltas: list[UsageDelta], now) -> tuple[Statement, Statement] | None:
    """For the deltas without a key: create their users' reserved keys if missing, then read their
    ids as (user_id, key id) rows. None when every delta has its key. The gateway always knows the
    key; buffer records and log lines written before per-key accounting, commands and tests may not."""
    users = sorted({d.user_id for d in deltas if d.key_id is None})
    if not users:
        return None
    table = key_table()
    create = [v for u in users for v in (u, RESERVED_KEY_NAME, reserved_key_prefix(u),
                                         reserved_key_digest(u), now, now)]
    return ((sql.ensure_reserved_keys(table, len(users)), create),
            (sql.reserved_key_ids(table, len(users)), [reserved_key_digest(u) for u in users]))


def _keyed(deltas: list[UsageDelta], reserved: dict[int, int]) -> list[UsageDelta]:
    return [replace(d, key_id=reserved[d.user_id]) if d.key_id is None else d for d in deltas]


def with_reserved_keys(deltas: list[UsageDelta], cursor, adapt_datetime: Callable = lambda value: value,
                       ) -> list[UsageDelta]:
    """The deltas, each without a key given its user's reserved key, on the cursor's transaction."""
    statements = reserved_key_statements(deltas, adapt_datetime(datetime.now(UTC)))
    if statements is None:
        return deltas
    (create, create_params), (read, read_params) = statements
    cursor.execute(create, create_params)
    cursor.execute(read, read_params)
    return _keyed(deltas, dict(cursor.fetchall()))


async def with_reserved_keys_async(deltas: list[UsageDelta], cursor) -> list[UsageDelta]:
    statements = reserved_key_statements(deltas, datetime.now(UTC))
    if statements is None:
        return deltas
    (create, create_params), (read, read_params) = statements
    await cursor.execute(create, create_params)
    await cursor.execute(read, read_params)
    return _keyed(deltas, dict(await cursor.fetchall()))


def key_table() -> str:
    """The API keys' table, named through the buckets' foreign key (usage never imports gateway)."""
    return FiveMinuteUsage._meta.get_field("key").related_model._meta.db_table


def write_with_cursor(deltas: list[UsageDelta], cursor, vendor: str, adapt_datetime: Callable) -> None:
    """Resolve missing keys, then run the write plan, statement by statement, in the cursor's
    transaction (Django's connection: commands, replays, SQLite's writer)."""
    plan = write_plan(with_reserved_keys(deltas, cursor, adapt_datetime), vendor)

    def execute(statement: Statement) -> None:
        sql_text, params = statement
        cursor.execute(sql_text, [adapt_datetime(p) if isinstance(p, datetime) else p for p in params])

    for statement in plan.lock:
        execute(statement)
    locked = cursor.fetchall()
    for statement in plan.upserts:
        execute(statement)
    for statement in plan.late(locked):
        execute(statement)


def record_many(deltas: Iterable[UsageDelta], using: str = "default") -> None:
    """Record deltas in one transaction through Django's connection."""
    deltas = list(deltas)
    if not deltas:
        return
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        write_with_cursor(deltas, cursor, connection.vendor, connection.ops.adapt_datetimefield_value)


def record(delta: UsageDelta, using: str = "default") -> None:
    record_many([delta], using=using)

