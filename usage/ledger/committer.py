"""The gateway's group commit: every delta waiting while a write is in flight joins the next
batch, and each caller returns only once its own delta is written (or gets the write's error).
The committer is given the object that writes a batch; it knows nothing of databases or buffers."""

import asyncio
import os
from collections.abc import Callable
from time import perf_counter
from typing import Protocol

from usage.ledger.delta import UsageDelta
from usage.ledger.metrics import observe_commit


class BatchWriter(Protocol):
    async def write(self, deltas: list[UsageDelta]) -> None: ...


_yield_cpu = getattr(os, "sched_yield", lambda: None)  # GroupCommitter._spin; a no-op where the OS has none


class GroupCommitter:
    """One writer task per process: takes every delta waiting, writes them in one transaction,
    then releases each waiting caller (or raises the write's error in each).

    Up to `batches_in_flight` batches are written at once, on their own connections (each batch
    locks its rows in key order, merge_deltas, so batches never deadlock). One by default: every
    delta that arrives while a batch commits joins the next, and fewer, larger batches cost this
    process and the database less per request (measured: docs/performance.md). A write being one
    round trip (PostgresWriter), a second batch in flight no longer hides a round trip."""

    def __init__(self, writer: BatchWriter, batches_in_flight: int = 1, spin_seconds: float = 0.0,
                 in_progress: Callable[[], int] | None = None):
        self._writer = writer
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
        spin only takes the CPU that they, the database and the upstream need (docs/performance.md
        has the measurement)."""
        return self._in_progress is None or self._in_progress() <= self._waiting

    async def _lane(self, batch: list[tuple[UsageDelta, asyncio.Future]]) -> None:
        """Write `batch`, then at once every delta that arrived meanwhile, until none is waiting.

        The next batch goes out in the same step of the event loop that received the previous
        one's answer: before the callers just released run on (each answers its client), not after
        them. Handing back to the writer task instead (a wake-up, then a new task) put two passes of
        the loop's queue between two batches, a large part of each commit's cycle under load."""
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
            await self._writer.write([delta for delta, _ in batch])
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

