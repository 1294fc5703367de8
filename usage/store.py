"""The gateway's one way to store usage (the hot path's door): the database first, the disk buffer
when it is down, and never silently lost.

The store puts the pieces together: the ledger's group commit (usage.ledger.committer) hands each
batch to the breaker (usage.degraded.breaker), which writes it through the database writer
(usage.ledger.writers) or, while the database is away, to this process's buffer file. A background
task probes the database; once it answers, the buffer is sealed and drained (usage.degraded.drain).
If the buffer cannot take a batch either (disk full, permissions), each delta is logged in full as
one `usage_delta_lost` line that `drain_usage_buffer --from-log` replays, and the store stops
accepting new requests (503) unless USAGE_FAIL_OPEN is set.
"""

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone

from usage.degraded.breaker import UNAVAILABLE, Breaker
from usage.degraded.buffer import QUARANTINE, BufferWriter, directory_writable
from usage.degraded.drain import candidates, drain
from usage.ledger.committer import GroupCommitter
from usage.ledger.delta import UsageDelta
from usage.ledger.writers import make_writer
from usage.models import BufferEvent

logger = logging.getLogger("codevector.usage")


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
                 in_progress: Callable[[], int] | None = None, writer=None):
        self.buffer_dir = Path(buffer_dir or settings.USAGE_BUFFER_DIR)
        self.fail_open = settings.USAGE_FAIL_OPEN if fail_open is None else fail_open
        self.retry_seconds = settings.USAGE_DB_RETRY_SECONDS
        self.writer = writer or make_writer(pool_size=settings.GATEWAY_DB_POOL_SIZE,
                                            timeout=settings.USAGE_DB_TIMEOUT_SECONDS,
                                            synchronous_commit=settings.USAGE_SYNCHRONOUS_COMMIT)
        self.buffer = BufferWriter(self.buffer_dir, settings.USAGE_BUFFER_MAX_FILE_BYTES)
        # One thread for buffer appends (ordered, never blocking the event loop on fsync) and
        # one for draining through Django's connection.
        self._buffer_thread = ThreadPoolExecutor(1, thread_name_prefix="usage-buffer")
        self._drain_thread = ThreadPoolExecutor(1, thread_name_prefix="usage-drain")
        self.breaker = Breaker(self.writer, self.buffer, self.buffer_dir, self._buffer_thread,
                               settings.USAGE_DB_TIMEOUT_SECONDS)
        self.committer = GroupCommitter(self.breaker, spin_seconds=settings.USAGE_COMMIT_SPIN_SECONDS,
                                        in_progress=in_progress)
        self._counts = self.breaker.counts
        self._tasks: list[asyncio.Task] = []
        self._reported = {"drained": 0, "lost": 0, "refused": 0, "rejected": 0}  # already written as BufferEvents
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
        if not self.breaker.db_down:  # what this process saw since its last report, before it goes
            await loop.run_in_executor(self._drain_thread, self._report_events_quietly)
        await self.writer.close()
        await loop.run_in_executor(self._drain_thread, connections.close_all)
        self._buffer_thread.shutdown(wait=True)
        self._drain_thread.shutdown(wait=True)

    # --- the request path -------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False when a new request could not be recorded anywhere (and fail-open is off)."""
        return self.fail_open or not self.breaker.db_down or self.breaker.buffer_ok

    def count_refusal(self) -> None:
        self._counts["refused"] += 1

    async def record(self, delta: UsageDelta) -> None:
        """Store the delta durably (database or buffer) before returning; never raises."""
        await self.committer.record(delta)

    # --- background: probe, drain, report ---------------------------------------------------

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_drain = 0.0
        while True:
            try:
                if self.breaker.db_down:
                    await asyncio.sleep(self.retry_seconds)
                    if not self.breaker.buffer_ok:
                        self.breaker.buffer_ok = await loop.run_in_executor(None, directory_writable, self.buffer_dir)
                    if await self._database_answers():
                        logger.warning("usage database answers again; draining the buffer")
                        self.breaker.db_down = False
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
            await self.breaker.bounded(self.writer.ping())
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
        quarantine = self.buffer_dir / QUARANTINE
        self._quarantined = len(list(quarantine.iterdir())) if quarantine.is_dir() else 0

    def status(self) -> StoreStatus:
        return StoreStatus(
            database_up=not self.breaker.db_down,
            buffer_writable=self.breaker.buffer_ok,
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
