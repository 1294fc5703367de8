"""The usage ledger: record one delta into its 5-minute bucket with an atomic UPSERT.

Two ways in, one statement plan:
- `record` / `record_many` (sync, Django's connection): commands, seeding, tests;
- `GroupCommitter` (async, the gateway): every delta waiting while a write is in flight is merged
  into the next multi-row UPSERT, and each caller returns only once its own delta is committed.

`write_plan` is the single definition of what a write does (the watermark lock, the 5-minute
UPSERT and the late-data path); the sync and async drivers run the very same statements.
"""

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from operator import add
from time import perf_counter

import psycopg
from django.db import connections, transaction
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from usage import pgwire, sql
from usage.calendar import as_utc, day_bounds, hour_start, month_bounds, zone
from usage.counters import COUNTERS, Counters, counter_values
from usage.metrics import observe_commit
from usage.models import FiveMinuteUsage

logger = logging.getLogger(__name__)

# Rows per statement: 500 x 11 parameters stays far below SQLite's and PostgreSQL's limits.
ROWS_PER_STATEMENT = 500
BUCKET_SECONDS = 300
BUCKET = timedelta(seconds=BUCKET_SECONDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageDelta(Counters):
    """One request's counters (usage.counters), with where and when they belong."""

    id: str
    user_id: int
    facade_id: int
    at: datetime
    key_id: int | None = None  # None: the user's reserved key (usage from before per-key accounting)
    requests: int = 1

    def __post_init__(self):
        if self.at.tzinfo is None:
            raise ValueError("a usage delta needs a timezone-aware time")
        values = counter_values(self)
        if not all(type(value) is int for value in values):  # one pass; the message names the first culprit
            name, value = next((n, v) for n, v in zip(COUNTERS, values) if type(v) is not int)
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "UsageDelta":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["at"] = datetime.fromisoformat(values["at"])
        return cls(**values)


def five_minute_start(at: datetime) -> datetime:
    """The start of the 5-minute bucket holding `at`, in UTC.

    Every real UTC offset is a multiple of 5 minutes, so these boundaries are local boundaries
    in any time zone too.
    """
    utc = at.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % 5, second=0, microsecond=0)


Key = tuple[datetime, int, int, int]  # bucket start, user, API key, facade


def merge_deltas(deltas: Iterable[UsageDelta]) -> dict[Key, list[int]]:
    """Sum deltas per bucket key, in key order (a fixed lock order: no deadlocks between writers)."""
    merged: dict[Key, list[int]] = {}
    start = end = None  # the last delta's bucket: a batch's deltas nearly all share one
    for delta in deltas:
        if delta.key_id is None:
            raise ValueError(f"delta {delta.id} has no API key: resolve it with with_reserved_keys() first")
        if start is None or not start <= delta.at < end:
            start = five_minute_start(delta.at)
            end = start + BUCKET
        key = (start, delta.user_id, delta.key_id, delta.facade_id)
        counters = counter_values(delta)
        known = merged.get(key)
        merged[key] = list(counters) if known is None else list(map(add, known, counters))
    return dict(sorted(merged.items())) if len(merged) > 1 else merged


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
    create = [v for u in users for v in (u, sql.RESERVED_KEY_NAME, sql.reserved_key_prefix(u),
                                         sql.reserved_key_digest(u), now, now)]
    return ((sql.ensure_reserved_keys(table, len(users)), create),
            (sql.reserved_key_ids(table, len(users)), [sql.reserved_key_digest(u) for u in users]))


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


# --- async group commit (the gateway) ---------------------------------------------------------

WriteBatch = Callable[[list[UsageDelta]], Awaitable[None]]
_yield_cpu = getattr(os, "sched_yield", lambda: None)  # GroupCommitter._spin; a no-op where the OS has none


class GroupCommitter:
    """One writer task per process: takes every delta waiting, writes them in one transaction,
    then releases each waiting caller (or raises the write's error in each).

    Up to `batches_in_flight` batches are written at once, on their own connections (each batch
    locks its rows in key order, merge_deltas, so batches never deadlock). One by default: every
    delta that arrives while a batch commits joins the next, and fewer, larger batches cost this
    process and the database less per request (wrk at 16 in flight, gateways with one and two
    taking turns with the forwarder: 58 % of its throughput against 52 %, medians of ten rounds;
    equal at 200 in flight). A write being one round trip (PostgresWriter), a second batch in
    flight no longer hides a round trip."""

    def __init__(self, write_batch: WriteBatch, batches_in_flight: int = 1, spin_seconds: float = 0.0,
                 in_progress: Callable[[], int] | None = None):
        self._write_batch = write_batch
        self.spin_seconds = spin_seconds
        # The requests this process is serving (the gateway's count); None: only the waiting callers.
        self._in_progress = in_progress
        self._waiting = 0  # callers in record(), not yet released
        self._spinning = False
        self._spin_until = 0.0
        self._pending: list[tuple[UsageDelta, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._slots = asyncio.Semaphore(batches_in_flight)
        self._writing: set[asyncio.Task] = set()

    def start(self) -> None:
        if self._task is None:
            # The loop, kept: asyncio.get_running_loop() is a getpid() system call on Python 3.11.
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="usage-ledger-writer")

    async def record(self, delta: UsageDelta) -> None:
        if self._closing:
            raise RuntimeError("the ledger is closed")
        self.start()
        future = self._loop.create_future()
        self._pending.append((delta, future))
        self._waiting += 1
        self._wakeup.set()
        try:
            await future
        finally:
            self._waiting -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closing:
                    await asyncio.gather(*self._writing, return_exceptions=True)
                    return
                continue
            await self._slots.acquire()  # meanwhile more deltas join the batch
            if not self._pending:  # a lane that just finished its batch took them
                self._slots.release()
                continue
            batch, self._pending = self._pending, []
            task = loop.create_task(self._lane(batch), name="usage-ledger-lane")
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    def _spin_while_writing(self) -> None:
        """Poll (`_spin`) for at most `spin_seconds` from now: called as each batch goes out, so a
        lane writing batch after batch polls through all of them, and a batch that hangs stops the
        polling once its own bound is reached."""
        if not self.spin_seconds:
            return
        loop = self._loop
        self._spin_until = loop.time() + self.spin_seconds
        if not self._spinning:
            self._spinning = True
            loop.call_soon(self._spin, loop)

    def _spin(self, loop: asyncio.AbstractEventLoop) -> None:
        """While a batch is in flight (at most `spin_seconds`), keep the event loop polling instead
        of sleeping: a callback always ready makes each turn of the loop look for I/O without
        blocking. On a virtual machine whose idle CPU halts (a VM exit), waking up for the commit's
        answer costs more than the wait; the requests waiting on the batch pay it
        (settings.USAGE_COMMIT_SPIN_SECONDS). Each turn yields the CPU to any process waiting for
        it (sched_yield): the database answering the batch may be one."""
        if self._writing and loop.time() < self._spin_until and self._nothing_else_to_do():
            _yield_cpu()  # PostgreSQL or the upstream, if waiting for this CPU, run first
            loop.call_soon(self._spin, loop)
        else:
            self._spinning = False

    def _nothing_else_to_do(self) -> bool:
        """True while every request this process serves waits for a commit: the loop would sleep
        until the answer. With other requests in progress, their I/O wakes the loop anyway, and a
        spin only takes the CPU that they, the database and the upstream need (16 in flight on
        two cores: 59 % of the bare forwarder without a spin, 55 % with one; README, Performance)."""
        return self._in_progress is None or self._in_progress() <= self._waiting

    async def _lane(self, batch: list[tuple[UsageDelta, asyncio.Future]]) -> None:
        """Write `batch`, then at once every delta that arrived meanwhile, until none is waiting.

        The next batch goes out in the same step of the event loop that received the previous
        one's answer: before the callers just released run on (each answers its client), not after
        them. Handing back to the writer task instead (a wake-up, then a new task) put two passes of
        the loop's queue between two batches (16 in flight: ~1 ms of a 2.8 ms cycle)."""
        try:
            while batch:
                self._spin_while_writing()
                await self._write(batch)
                batch, self._pending = self._pending, []
        finally:
            self._slots.release()
            self._wakeup.set()  # a closing committer looks again once every batch is written

    async def _write(self, batch: list[tuple[UsageDelta, asyncio.Future]]) -> None:
        started = perf_counter()
        try:
            await self._write_batch([delta for delta, _ in batch])
        except Exception as exc:  # each caller decides what to do with its own delta
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
        observe_commit(len(batch), perf_counter() - started)

    async def close(self) -> None:
        """Commit every pending delta, then stop the writer task."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
            self._task = None


@dataclass
class WriteAttempt:
    """How far a write got, for whoever stops waiting for it: its txid once read, and whether
    COMMIT was sent (after which the outcome is unknown until txid_status() says)."""

    txid: int | None = None
    committing: bool = False


class CommitOutcomeUnknown(Exception):
    """The connection failed while COMMIT was under way: the write may or may not have landed.
    `txid` (read before COMMIT) lets PostgreSQL's txid_status() answer which."""

    def __init__(self, txid: int):
        super().__init__(f"commit outcome unknown for transaction {txid}")
        self.txid = txid


def _locked(results: list) -> list[tuple[int, datetime | None]]:
    """The lock statement's row (the last result): (txid, watermark), as write_plan().late reads it."""
    row = results[-1]
    watermark = pgwire.text(row, 0, 1)
    return [(int(pgwire.text(row, 0, 0)), _watermark(watermark) if watermark else None)]


@functools.lru_cache(maxsize=8)
def _watermark(text: str) -> datetime:
    """The watermark read back as text (the same one for a rollup's interval: parsed once)."""
    return datetime.fromisoformat(text)


@dataclass(eq=False)
class _Armed:
    """A connection left inside the next write's transaction: its txid and watermark already read
    (the watermark's lock held shared), so that write is one round trip."""

    conn: psycopg.AsyncConnection
    locked: list
    expiry: asyncio.TimerHandle | None = None


# The 5-minute UPSERT for up to this many rows is prepared on each of the writer's connections:
# PostgreSQL then neither parses nor plans it per batch (about 0.1 ms of its CPU a batch here).
PREPARED_ROWS = 16


class PostgresWriter:
    """Writes batches through an async psycopg pool (no Django on the request path).

    One round trip per batch while batches keep coming: a write's text ends by opening the next
    write's transaction on the same connection ("<UPSERTs>; COMMIT; BEGIN; <the lock>"), which
    comes back *armed* with its txid and the watermark, its lock held shared (an advisory lock:
    usage.sql.WATERMARK_LOCK_KEY). The next batch on it sends only "<UPSERTs>; COMMIT; BEGIN; <the
    lock>" again. An armed connection left unused for ARMED_SECONDS is rolled back into the pool:
    until then it holds the watermark's lock, which a rollup waits for (so a rollup waits at most
    that long for an idle gateway).

    The connections need a session of their own on the server (a direct connection or session
    pooling): the UPSERTs are prepared statements and the armed transaction spans round trips."""

    resolves_unknown_outcomes = True  # txid_status(): a write abandoned mid-way can be resolved
    ARMED_SECONDS = 0.2
    # The lock's statements, prepared too: as plain text PostgreSQL parsed and planned the
    # watermark's read for every batch (~0.15 ms of its CPU here, more than the prepared UPSERT's
    # whole execution).
    SHARE_NAME = "codevector_share_watermark"
    LOCK_NAME = "codevector_lock_watermark"

    def __init__(self, conninfo: str, max_size: int = 4, timeout: float = 2.0, synchronous_commit: bool = True):
        self.conninfo = conninfo
        self.timeout = timeout
        # UTC and ISO dates: the watermark comes back as text that datetime.fromisoformat reads.
        options = "-c TimeZone=UTC -c DateStyle=ISO"
        if not synchronous_commit:  # settings.USAGE_SYNCHRONOUS_COMMIT: the trade-off is described there
            options += " -c synchronous_commit=off"
        kwargs = {"connect_timeout": max(1, round(timeout)), "autocommit": True, "options": options}
        self.pool = AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, open=False, timeout=timeout,
                                        kwargs=kwargs, configure=self._prepare)
        table = sql.LEVEL_TABLES["5min"]
        self.prepared = {sql.add_counters(table, rows): f"codevector_add_5min_{rows}"
                         for rows in range(1, PREPARED_ROWS + 1)}
        self.prepared[sql.SHARE_WATERMARK["postgresql"]] = self.SHARE_NAME
        self.prepared[sql.LOCK_WATERMARK_FOR_WRITE["postgresql"]] = self.LOCK_NAME
        self._armed: list[_Armed] = []
        self._disarming: set[asyncio.Task] = set()
        self._lock_rendered: tuple[dict | None, str] = (None, "")

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        while self._armed:
            await self._disarm(self._armed.pop())
        await asyncio.gather(*self._disarming, return_exceptions=True)
        await self.pool.close()

    async def _prepare(self, conn: psycopg.AsyncConnection) -> None:
        """Each new connection of the pool: its prepared UPSERTs."""
        if self.prepared:
            await pgwire.run(conn, "; ".join(sql.prepare(name, text) for text, name in self.prepared.items()))

    async def write(self, deltas: list[UsageDelta], attempt: WriteAttempt | None = None) -> None:
        """One transaction: the watermark lock (which reads the txid), the 5-minute UPSERTs, the
        late-data statements (rare), COMMIT. The txid is known before the COMMIT's outcome can be
        lost, so a cut COMMIT is resolved with txid_status(), never replayed blindly.

        On an armed connection (the class docstring) the lock was taken at the end of the previous
        write: one round trip. Otherwise two: "BEGIN; <the lock>" first. Each goes as one text
        (usage.pgwire; integers and timestamps inlined by usage.sql.render) on an autocommit
        connection: psycopg's cursors, transaction block or pipeline mode cost more CPU than this."""
        attempt = attempt or WriteAttempt()
        armed = self._take_armed()
        conn = armed.conn if armed is not None else await self.pool.getconn()
        lock = self._lock_text()
        try:
            if any(delta.key_id is None for delta in deltas):  # never on the gateway's path
                deltas = await with_reserved_keys_async(deltas, psycopg.AsyncClientCursor(conn))
            plan = write_plan(deltas, "postgresql")
            locked = armed.locked if armed is not None else _locked(await pgwire.run(conn, f"BEGIN; {lock}"))
            attempt.txid = locked[0][0]
            attempt.committing = True  # the COMMIT goes out with the UPSERTs
            text = sql.render([*plan.upserts, *plan.late(locked)], self.prepared)
            self._arm(_Armed(conn, _locked(await pgwire.run(conn, f"{text}; COMMIT; BEGIN; {lock}"))))
        except psycopg.OperationalError as exc:
            await self._release(conn, broken=True)
            if attempt.committing:
                raise CommitOutcomeUnknown(attempt.txid) from exc
            raise
        except asyncio.CancelledError:
            await self._release(conn, broken=True)  # abandoned by a caller that stopped waiting: never reused
            raise
        except psycopg.errors.InvalidSqlStatementName as exc:
            # A prepared statement is missing (a pooler between us and PostgreSQL that does not keep
            # the session). Write as plain text from now on. An UPSERT's EXECUTE failed before COMMIT:
            # nothing was committed, this batch is written again. One of the lock's EXECUTEs after
            # COMMIT (the UPSERTs sent as text): the batch may have landed, txid_status() says.
            await self._end(conn)
            if not self.prepared:
                raise
            logger.warning("the ledger's prepared statements are missing on the server (transaction pooling?); "
                           "writing without them")
            self.prepared = {}
            if attempt.committing and any(f'"{name}"' in str(exc) for name in (self.SHARE_NAME, self.LOCK_NAME)):
                raise CommitOutcomeUnknown(attempt.txid) from exc
            attempt.committing = False
            await self.write(deltas, attempt)
        except BaseException:
            # A statement failed: the statements after it, COMMIT included, did not run. End the
            # transaction before the connection is reused.
            await self._end(conn)
            raise

    def _lock_text(self) -> str:
        """The lock's statements as text, rendered once for each set of prepared statements."""
        if self._lock_rendered[0] is not self.prepared:
            self._lock_rendered = (self.prepared, sql.render(lock_statements("postgresql"), self.prepared))
        return self._lock_rendered[1]

    async def _end(self, conn: psycopg.AsyncConnection) -> None:
        """Roll back what a failed statement left open, and return the connection to the pool
        (closed, if even the ROLLBACK fails or is cut short)."""
        try:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await pgwire.run(conn, "ROLLBACK")
        except (psycopg.Error, OSError):
            await self._release(conn, broken=True)
        except asyncio.CancelledError:
            await self._release(conn, broken=True)
            raise
        else:
            await self._release(conn)

    def _take_armed(self) -> _Armed | None:
        while self._armed:
            armed = self._armed.pop()
            armed.expiry.cancel()
            if not armed.conn.closed:
                return armed
            self._spawn(self._release(armed.conn, broken=True))
        return None

    def _arm(self, armed: _Armed) -> None:
        armed.expiry = asyncio.get_running_loop().call_later(self.ARMED_SECONDS, self._expire, armed)
        self._armed.append(armed)

    def _expire(self, armed: _Armed) -> None:
        if armed in self._armed:
            self._armed.remove(armed)
            self._spawn(self._disarm(armed))

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._disarming.add(task)
        task.add_done_callback(self._disarming.discard)

    async def _disarm(self, armed: _Armed) -> None:
        """Roll an unused armed transaction back (it wrote nothing) and return its connection."""
        if armed.expiry is not None:
            armed.expiry.cancel()
        try:
            await asyncio.wait_for(pgwire.run(armed.conn, "ROLLBACK"), self.timeout)
        except (asyncio.TimeoutError, psycopg.Error, OSError):
            await self._release(armed.conn, broken=True)
        else:
            await self._release(armed.conn)

    async def _release(self, conn: psycopg.AsyncConnection, broken: bool = False) -> None:
        if broken and not conn.closed:
            await conn.close()
        await self.pool.putconn(conn)

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def txid_status(self, txid: int) -> str | None:
        """'committed', 'aborted' or 'in progress' for a recent transaction, on a fresh connection."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, connect_timeout=2) as conn:
            cursor = await conn.execute(sql.TXID_STATUS, [txid])
            return (await cursor.fetchone())[0]


class ThreadWriter:
    """Writes batches through Django's connection in one dedicated thread (SQLite)."""

    resolves_unknown_outcomes = False  # a local file, its waits bounded by SQLite's busy timeout

    def __init__(self, using: str = "default"):
        self.using = using
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-ledger")

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, connections.close_all)
        self.executor.shutdown(wait=True)

    async def write(self, deltas: list[UsageDelta], attempt: WriteAttempt | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, record_many, deltas, self.using)

    async def ping(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self._ping)

    def _ping(self) -> None:
        with connections[self.using].cursor() as cursor:
            cursor.execute("SELECT 1")


def postgres_conninfo(using: str = "default") -> str | None:
    """psycopg conninfo for a PostgreSQL alias, or None when the database is not PostgreSQL."""
    settings_dict = connections[using].settings_dict
    if connections[using].vendor != "postgresql":
        return None
    parts = {
        "dbname": settings_dict["NAME"],
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": str(settings_dict["PORT"]) if settings_dict.get("PORT") else None,
    }
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"):
        if key in settings_dict.get("OPTIONS", {}):
            parts[key] = str(settings_dict["OPTIONS"][key])
    return make_conninfo(**{k: v for k, v in parts.items() if v is not None})


def make_writer(using: str = "default", pool_size: int = 4, timeout: float = 2.0, synchronous_commit: bool = True):
    conninfo = postgres_conninfo(using)
    return PostgresWriter(conninfo, pool_size, timeout, synchronous_commit) if conninfo else ThreadWriter(using)
