"""Where each batch goes: the database while it answers, this process's buffer file while it does
not, and the log when even the buffer cannot take it. The group committer is given this object;
`write` never raises, so each waiting caller's delta is stored somewhere durable or logged for
replay.

- A batch whose write fails because the database is unreachable goes to the buffer instead (one
  write, one fsync), and the breaker trips: the following batches go straight to the buffer
  without waiting on connection timeouts, until the store's probe finds the database again.
- A write whose COMMIT was cut off has an unknown outcome: txid_status() resolves it at once if
  the database still answers; otherwise the batch is buffered with its txid, and the drainer asks
  again before replaying it. So it is neither lost nor counted twice.
- A batch the database refuses (a constraint) is split until the refused delta stands alone,
  dead-lettered with its reason; the others are written.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from django.db import DatabaseError
from psycopg_pool import PoolTimeout

from usage.degraded.buffer import BufferWriter
from usage.degraded.deadletter import log_lost, reject
from usage.degraded.drain import DJANGO_UNAVAILABLE
from usage.ledger.delta import UsageDelta
from usage.ledger.writers import CommitOutcomeUnknown, WriteAttempt

logger = logging.getLogger("codevector.usage")

# How long a cut COMMIT whose transaction is still open is waited for before it is buffered.
IN_PROGRESS_WAIT_SECONDS = 2.0

# Errors that mean "the database cannot take this write now" (an outage: buffer and retry), for
# Django's drivers and psycopg's pool, and the bounded waits' own timeout.
UNAVAILABLE = (*DJANGO_UNAVAILABLE, OSError, asyncio.TimeoutError, psycopg.OperationalError,
               psycopg.InterfaceError, PoolTimeout)
# Errors that mean "the database refuses this data" (a constraint, say a user deleted while their
# key was still cached; a counter that would pass 2**63): the batch is split until the refused
# delta stands alone, dead-lettered. OverflowError: SQLite's driver refuses to bind such a value.
REJECTED = (DatabaseError, psycopg.Error, OverflowError)


class Breaker:
    """Writes batches through `writer` (usage.ledger.writers) or, while the database is away,
    `buffer`; keeps the counts the store reports."""

    def __init__(self, writer, buffer: BufferWriter, buffer_dir: Path, buffer_thread: ThreadPoolExecutor,
                 db_timeout: float):
        self.writer = writer
        self.buffer = buffer
        self.buffer_dir = buffer_dir
        self.buffer_thread = buffer_thread  # appends in order, never blocking the event loop on fsync
        self.db_timeout = db_timeout
        self.db_down = False
        self.buffer_ok = True
        self.counts = {"buffered": 0, "drained": 0, "lost": 0, "refused": 0, "rejected": 0}
        self._abandoned: set[asyncio.Task] = set()  # writes stopped waiting for (a hung database)

    async def write(self, deltas: list[UsageDelta]) -> None:
        if self.db_down:
            await self._to_buffer(deltas)
            return
        attempt = WriteAttempt()
        try:
            await self._write_bounded(deltas, attempt)
        except CommitOutcomeUnknown as exc:
            await self._resolve_unknown(deltas, exc.txid)
        except UNAVAILABLE as exc:
            self.trip(exc)
            # Stopped waiting after COMMIT was sent: the outcome is the drainer's to resolve with
            # the txid (the database is not answering now). Before COMMIT: it can never commit.
            await self._to_buffer(deltas, attempt.txid if attempt.committing else None)
        except REJECTED as exc:
            await self._isolate(deltas, exc)

    async def _isolate(self, deltas: list[UsageDelta], exc: BaseException) -> None:
        """The database refused the batch's data: split it until the refused delta stands alone;
        the others are written (each half through the whole path: outages still buffer)."""
        if len(deltas) == 1:
            reason = f"{type(exc).__name__}: {exc}".strip()
            self.counts["rejected"] += 1
            try:
                await asyncio.get_running_loop().run_in_executor(self.buffer_thread, reject, deltas, reason,
                                                                 self.buffer_dir)
            except OSError as error:  # the log line above is still there to replay from
                logger.critical("could not write the dead-letter file for delta %s: %s", deltas[0].id, error)
            return
        middle = len(deltas) // 2
        await self.write(deltas[:middle])
        await self.write(deltas[middle:])

    async def _write_bounded(self, deltas: list[UsageDelta], attempt: WriteAttempt) -> None:
        """The batch's write, at most USAGE_DB_TIMEOUT_SECONDS on PostgreSQL (asyncio.TimeoutError
        past it): the writer's round trips (usage.ledger.pgwire) stop at once when cancelled, so no task
        is needed to abandon them. SQLite's thread writer cannot be called back: its busy timeout
        bounds it."""
        if not self.writer.resolves_unknown_outcomes:
            await self.writer.write(deltas, attempt)
            return
        try:
            async with asyncio.timeout(self.db_timeout):
                await self.writer.write(deltas, attempt)
        except TimeoutError:
            raise asyncio.TimeoutError(f"the usage database did not answer within {self.db_timeout:g} s") from None

    async def bounded(self, operation):
        """Await a psycopg operation (txid_status, ping) at most USAGE_DB_TIMEOUT_SECONDS
        (asyncio.TimeoutError past it). A database that stops answering is an outage like one that
        refuses. The operation is cancelled but not waited for: psycopg may spend seconds trying to
        cancel on a dead socket."""
        task = asyncio.ensure_future(operation)
        done, _ = await asyncio.wait({task}, timeout=self.db_timeout)
        if task in done:
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget_abandoned)
        raise asyncio.TimeoutError(f"the usage database did not answer within {self.db_timeout:g} s")

    def _forget_abandoned(self, task: asyncio.Task) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.info("an abandoned usage write ended with %s", type(task.exception()).__name__)

    async def _resolve_unknown(self, deltas: list[UsageDelta], txid: int) -> None:
        try:
            status = await self.bounded(self.writer.txid_status(txid))
            # The server may not have read the COMMIT yet when the connection went: a transaction
            # still open is waited for a moment (it ends once the server sees the socket closed),
            # never replayed beside it. Still open after that: buffered with its txid, and the
            # drainer asks again before replaying.
            deadline = time.monotonic() + IN_PROGRESS_WAIT_SECONDS
            while status == "in progress" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                status = await self.bounded(self.writer.txid_status(txid))
        except UNAVAILABLE as exc:
            self.trip(exc)
            await self._to_buffer(deltas, txid)  # the drainer asks txid_status() before replaying
            return
        if status == "committed":
            logger.warning("usage write %s: connection lost during COMMIT, but it committed", txid)
        else:
            logger.warning("usage write %s: connection lost during COMMIT and it did not commit (%s); "
                           "buffering", txid, status)
            await self._to_buffer(deltas, txid if status == "in progress" else None)

    def trip(self, exc: BaseException) -> None:
        if not self.db_down:
            logger.error("usage database unavailable (%s: %s); buffering usage on disk in %s",
                         type(exc).__name__, exc, self.buffer_dir)
        self.db_down = True

    async def _to_buffer(self, deltas: list[UsageDelta], txid: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.buffer_thread, self.buffer.append_many, deltas, txid)
        except OSError as exc:
            self.buffer_ok = False
            self.counts["lost"] += len(deltas)
            logger.critical("usage buffer %s cannot take %d delta(s) (%s); logging them for "
                            "drain_usage_buffer --from-log", self.buffer_dir, len(deltas), exc)
            log_lost(deltas, logger)
        else:
            self.buffer_ok = True
            self.counts["buffered"] += len(deltas)
