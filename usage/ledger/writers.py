"""The two database writers a batch goes through: `PostgresWriter` (an async psycopg pool, one
round trip per batch, no Django on the request path) and `ThreadWriter` (Django's connection in one
thread: SQLite). `make_writer` picks the one the database needs."""

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import psycopg
from django.db import connections
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from usage import sql
from usage.ledger import pgwire
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import lock_statements, record_many, with_reserved_keys_async, write_plan

logger = logging.getLogger("usage.ledger")


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
# PostgreSQL then neither parses nor plans it per batch.
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
    # watermark's read for every batch, which cost it more than the prepared UPSERT's whole
    # execution.
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
        (usage.ledger.pgwire; integers and timestamps inlined by usage.sql.render) on an autocommit
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
