"""The gateway's one way to store usage: the database first, the disk buffer when it is down,
and never silently lost.

- Deltas go through the ledger's group commit. A batch whose write fails because the database
  is unreachable goes to this process's buffer file instead (one write, one fsync), and a
  circuit breaker sends the following batches straight to the buffer without waiting on
  connection timeouts. A background task probes the database; once it answers, the buffer file
  is sealed and drained.
- A write whose COMMIT was cut off has an unknown outcome: txid_status() resolves it at once if
  the database still answers; otherwise the batch is buffered with its txid, and the drainer
  asks again before replaying it. So it is neither lost nor counted twice.
- If the buffer cannot take a batch either (disk full, permissions), each delta is logged in
  full as one `usage_delta_lost` line that `drain_usage_buffer --from-log` replays, and the
  store stops accepting new requests (503) unless USAGE_FAIL_OPEN is set.
"""

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from django.db.models import Max
from django.utils import timezone
from psycopg_pool import PoolTimeout

from usage.buffer import BufferWriter, decode, directory_writable
from usage.drain import DJANGO_UNAVAILABLE, LOST_MARKER, candidates, drain, reject
from usage.ledger import CommitOutcomeUnknown, GroupCommitter, UsageDelta, WriteAttempt, make_writer
from usage.models import BufferEvent

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


@dataclass
class StoreStatus:
    database_up: bool
    buffer_writable: bool
    accepting: bool
    buffered: int  # deltas this process has written to the buffer
    pending_files: int  # buffer files on this host not yet drained
    oldest_pending: datetime | None
    drained: int  # deltas this process has replayed from the buffer
    last_drain_at: datetime | None
    quarantined_files: int
    lost: int  # deltas neither the database nor the buffer could take (logged for replay)
    refused: int  # requests refused because usage could not be recorded
    rejected: int  # deltas the database refused (a constraint), dead-lettered with the reason

    def as_dict(self) -> dict:
        data = asdict(self)
        for key in ("oldest_pending", "last_drain_at"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


class UsageStore:
    def __init__(self, *, buffer_dir: Path | None = None, fail_open: bool | None = None,
                 in_progress: Callable[[], int] | None = None):
        self.buffer_dir = Path(buffer_dir or settings.USAGE_BUFFER_DIR)
        self.fail_open = settings.USAGE_FAIL_OPEN if fail_open is None else fail_open
        self.retry_seconds = settings.USAGE_DB_RETRY_SECONDS
        self.writer = make_writer(pool_size=settings.GATEWAY_DB_POOL_SIZE, timeout=settings.USAGE_DB_TIMEOUT_SECONDS,
                                  synchronous_commit=settings.USAGE_SYNCHRONOUS_COMMIT)
        self.committer = GroupCommitter(self._write_batch, spin_seconds=settings.USAGE_COMMIT_SPIN_SECONDS,
                                        in_progress=in_progress)
        self.buffer = BufferWriter(self.buffer_dir, settings.USAGE_BUFFER_MAX_FILE_BYTES)
        # One thread for buffer appends (ordered, never blocking the event loop on fsync) and
        # one for draining through Django's connection.
        self._buffer_thread = ThreadPoolExecutor(1, thread_name_prefix="usage-buffer")
        self._drain_thread = ThreadPoolExecutor(1, thread_name_prefix="usage-drain")
        self._db_down = False
        self._buffer_ok = True
        self._tasks: list[asyncio.Task] = []
        self._counts = {"buffered": 0, "drained": 0, "lost": 0, "refused": 0, "rejected": 0}
        self._reported = {"drained": 0, "lost": 0, "refused": 0, "rejected": 0}  # already written as BufferEvents
        self.db_timeout = settings.USAGE_DB_TIMEOUT_SECONDS
        self._abandoned: set[asyncio.Task] = set()  # writes stopped waiting for (a hung database)
        self._last_drain_at: datetime | None = None
        self._quarantined = 0
        self._pending_files = 0
        self._oldest_pending: datetime | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        await self.writer.open()
        self.committer.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._maintain(), name="usage-store-maintenance"))

    async def close(self) -> None:
        """Commit (or buffer) every pending delta, seal the buffer file, stop the tasks."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.committer.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._buffer_thread, self.buffer.seal)
        if not self._db_down:  # what this process saw since its last report, before it goes
            await loop.run_in_executor(self._drain_thread, self._report_events_quietly)
        await self.writer.close()
        await loop.run_in_executor(self._drain_thread, connections.close_all)
        self._buffer_thread.shutdown(wait=True)
        self._drain_thread.shutdown(wait=True)

    # --- the request path -------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False when a new request could not be recorded anywhere (and fail-open is off)."""
        return self.fail_open or not self._db_down or self._buffer_ok

    def count_refusal(self) -> None:
        self._counts["refused"] += 1

    async def record(self, delta: UsageDelta) -> None:
        """Store the delta durably (database or buffer) before returning; never raises."""
        await self.committer.record(delta)

    # --- the writer task --------------------------------------------------------------------

    async def _write_batch(self, deltas: list[UsageDelta]) -> None:
        if self._db_down:
            await self._to_buffer(deltas)
            return
        attempt = WriteAttempt()
        try:
            await self._write_bounded(deltas, attempt)
        except CommitOutcomeUnknown as exc:
            await self._resolve_unknown(deltas, exc.txid)
        except UNAVAILABLE as exc:
            self._trip(exc)
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
            self._counts["rejected"] += 1
            try:
                await asyncio.get_running_loop().run_in_executor(self._buffer_thread, reject, deltas, reason,
                                                                 self.buffer_dir)
            except OSError as error:  # the log line above is still there to replay from
                logger.critical("could not write the dead-letter file for delta %s: %s", deltas[0].id, error)
            return
        middle = len(deltas) // 2
        await self._write_batch(deltas[:middle])
        await self._write_batch(deltas[middle:])

    async def _write_bounded(self, deltas: list[UsageDelta], attempt: WriteAttempt) -> None:
        """The batch's write, at most USAGE_DB_TIMEOUT_SECONDS on PostgreSQL (asyncio.TimeoutError
        past it): the writer's round trips (usage.pgwire) stop at once when cancelled, so no task
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

    async def _bounded(self, operation):
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
            status = await self._bounded(self.writer.txid_status(txid))
            # The server may not have read the COMMIT yet when the connection went: a transaction
            # still open is waited for a moment (it ends once the server sees the socket closed),
            # never replayed beside it. Still open after that: buffered with its txid, and the
            # drainer asks again before replaying.
            deadline = time.monotonic() + IN_PROGRESS_WAIT_SECONDS
            while status == "in progress" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                status = await self._bounded(self.writer.txid_status(txid))
        except UNAVAILABLE as exc:
            self._trip(exc)
            await self._to_buffer(deltas, txid)  # the drainer asks txid_status() before replaying
            return
        if status == "committed":
            logger.warning("usage write %s: connection lost during COMMIT, but it committed", txid)
        else:
            logger.warning("usage write %s: connection lost during COMMIT and it did not commit (%s); "
                           "buffering", txid, status)
            await self._to_buffer(deltas, txid if status == "in progress" else None)

    def _trip(self, exc: BaseException) -> None:
        if not self._db_down:
            logger.error("usage database unavailable (%s: %s); buffering usage on disk in %s",
                         type(exc).__name__, exc, self.buffer_dir)
        self._db_down = True

    async def _to_buffer(self, deltas: list[UsageDelta], txid: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._buffer_thread, self.buffer.append_many, deltas, txid)
        except OSError as exc:
            self._buffer_ok = False
            self._counts["lost"] += len(deltas)
            logger.critical("usage buffer %s cannot take %d delta(s) (%s); logging them for "
                            "drain_usage_buffer --from-log", self.buffer_dir, len(deltas), exc)
            for delta in deltas:
                logger.critical("%s%s", LOST_MARKER, json.dumps(delta.to_dict(), separators=(",", ":")))
        else:
            self._buffer_ok = True
            self._counts["buffered"] += len(deltas)

    # --- background: probe, drain, report ---------------------------------------------------

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_drain = 0.0
        while True:
            try:
                if self._db_down:
                    await asyncio.sleep(self.retry_seconds)
                    if not self._buffer_ok:
                        self._buffer_ok = await loop.run_in_executor(None, directory_writable, self.buffer_dir)
                    if await self._database_answers():
                        logger.warning("usage database answers again; draining the buffer")
                        self._db_down = False
                        next_drain = 0.0
                    continue
                if time.monotonic() >= next_drain:
                    next_drain = time.monotonic() + settings.USAGE_DRAIN_INTERVAL_SECONDS
                    await loop.run_in_executor(self._buffer_thread, self.buffer.seal)
                    await loop.run_in_executor(self._drain_thread, self._drain_once)
                await asyncio.sleep(min(self.retry_seconds, settings.USAGE_DRAIN_INTERVAL_SECONDS))
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the maintenance loop alive whatever one round hit
                logger.exception("usage store maintenance failed; retrying")
                await asyncio.sleep(self.retry_seconds)

    async def _database_answers(self) -> bool:
        try:
            await self._bounded(self.writer.ping())
            return True
        except (*UNAVAILABLE, Exception):
            return False

    def _drain_once(self) -> None:
        """Runs in the drain thread: replay what this host has buffered, then refresh the counts."""
        close_old_connections()
        try:
            if candidates(self.buffer_dir):
                report = drain(self.buffer_dir)
                if report.files:
                    self._counts["drained"] += report.applied
                    self._counts["rejected"] += report.rejected
                    self._quarantined += len(report.quarantined)
                    self._last_drain_at = timezone.now()
                    logger.warning("replayed %d buffered usage deltas from %d file(s) (%d already applied)",
                                   report.applied, report.files, report.duplicates)
            self._report_events()
        except DatabaseError as exc:
            logger.warning("buffer drain stopped: %s", exc)
        finally:
            self._refresh_pending()

    def _report_events_quietly(self) -> None:
        try:
            close_old_connections()
            self._report_events()
        except DatabaseError as exc:
            logger.warning("could not report degraded-mode counts on close: %s", exc)

    def _report_events(self) -> None:
        now = timezone.now()
        for kind, reported in list(self._reported.items()):
            count = self._counts[kind] - reported
            if count:
                BufferEvent.objects.create(kind=kind, count=count, host=socket.gethostname(), pid=os.getpid(), at=now)
                self._reported[kind] += count

    def _refresh_pending(self) -> None:
        files = candidates(self.buffer_dir)
        self._pending_files = len(files)
        oldest = min((f.stat().st_mtime for f in files if f.exists()), default=None)
        self._oldest_pending = datetime.fromtimestamp(oldest, tz=UTC) if oldest else None
        quarantine = self.buffer_dir / "quarantine"
        self._quarantined = len(list(quarantine.iterdir())) if quarantine.is_dir() else 0

    def status(self) -> StoreStatus:
        return StoreStatus(
            database_up=not self._db_down,
            buffer_writable=self._buffer_ok,
            accepting=self.accepting,
            buffered=self._counts["buffered"],
            pending_files=self._pending_files,
            oldest_pending=self._oldest_pending,
            drained=self._counts["drained"],
            last_drain_at=self._last_drain_at,
            quarantined_files=self._quarantined,
            lost=self._counts["lost"],
            rejected=self._counts["rejected"],
            refused=self._counts["refused"],
        )


@dataclass
class BufferOverview:
    """Degraded mode as the usage page's banner shows it (this host's buffer directory plus the
    events every process reported)."""

    pending_files: int
    pending_deltas: int
    oldest_pending: datetime | None
    quarantined_files: int
    lost: int
    refused: int
    last_drain_at: datetime | None
    rejected: int = 0

    @property
    def needs_attention(self) -> bool:
        return bool(self.pending_files or self.quarantined_files or self.lost or self.refused or self.rejected)


def buffer_overview(buffer_dir: Path | None = None, since: datetime | None = None) -> BufferOverview:
    directory = Path(buffer_dir or settings.USAGE_BUFFER_DIR)
    files = candidates(directory)
    pending_deltas = 0
    mtimes = []
    for path in files:
        try:
            pending_deltas += len(decode(path.read_bytes()).deltas)
            mtimes.append(path.stat().st_mtime)
        except OSError:  # drained meanwhile
            continue
    quarantine = directory / "quarantine"
    totals = BufferEvent.objects.totals(since)
    last_drain = BufferEvent.objects.filter(kind="drained").aggregate(last=Max("at"))["last"]
    return BufferOverview(
        pending_files=len(files),
        pending_deltas=pending_deltas,
        oldest_pending=datetime.fromtimestamp(min(mtimes), tz=UTC) if mtimes else None,
        quarantined_files=len(list(quarantine.iterdir())) if quarantine.is_dir() else 0,
        lost=totals.get("lost", 0),
        refused=totals.get("refused", 0),
        last_drain_at=last_drain,
        rejected=totals.get("rejected", 0),
    )
