"""The client's connections: at most `max_connections` in use, and `max_connections_per_origin` to
one origin (so one stuck upstream cannot take every slot), a wait for a slot bounded by the connect
timeout; the idle ones kept per pool key (an origin, or (origin, Transport) for a request with its
own transport, so no connection made with one facade's TLS or proxy carries another's requests),
reused only while live, and closed by a timer once idle `keepalive_seconds`."""

import asyncio
from collections import deque

from gateway.http_client.connection import _Connection
from gateway.http_client.errors import UpstreamDropped, UpstreamPoolFull


class _Slots:
    """A counting semaphore for connections in use. asyncio.Semaphore would do, but its locked()
    scans its waiters with a generator on every acquire; here the free path reads two attributes."""

    __slots__ = ("free", "waiters")

    def __init__(self, size: int):
        self.free = size
        self.waiters: deque[asyncio.Future] = deque()

    def take(self) -> bool:
        if self.free and not self.waiters:  # never ahead of a request already waiting
            self.free -= 1
            return True
        return False

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a slot is handed over by give()."""
        waiter = loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot, then cancelled before taking it: the next one gets it
            else:
                self.waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to it directly: `free` never counts it
                return
        self.free += 1


class Pools:
    """HttpClient's slots and idle connections. A base class of HttpClient rather than an object it
    holds: post() takes its slots on the free path by reading their counters itself, with no call
    in between, and a Response gives its connection back to its client (`_keep`, `_free_slots`).
    Its methods run on the loop the client was first used on (`_loop`, bound by post);
    gateway/metrics.py reads `_open` and `_idle` by name."""

    def __init__(self, max_connections: int, max_connections_per_origin: int, keepalive_seconds: float):
        self.max_connections = max_connections
        self.max_connections_per_origin = max_connections_per_origin
        self.keepalive_seconds = keepalive_seconds
        self._idle: dict[tuple, list[_Connection]] = {}  # by pool key, oldest first: reuse takes the newest
        self._open: set[_Connection] = set()  # every connection not yet lost, idle or in use
        self._slots = _Slots(max_connections)  # connections in use at once
        self._origin_slots: dict[tuple, _Slots] = {}  # the same, per origin
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _add_origin(self, origin) -> _Slots:
        slots = self._origin_slots[origin] = _Slots(self.max_connections_per_origin)
        return slots

    async def _wait_for_slots(self, origin, origin_slots: _Slots, timeout: float) -> None:
        # The origin's slot first: requests queued behind a stuck origin hold none of the client's.
        which = f"all {self.max_connections_per_origin} connections to this origin"
        try:
            async with asyncio.timeout(timeout):
                if not origin_slots.take():
                    await origin_slots.wait(self._loop)
                which = f"all {self.max_connections} connections of the client"
                try:
                    if not self._slots.take():
                        await self._slots.wait(self._loop)
                except BaseException:
                    origin_slots.give()
                    raise
        except TimeoutError:
            _, host, port = origin
            raise UpstreamPoolFull(f"no connection to {host}:{port} within {timeout:g} s: {which} were in use, "
                                   "the pool was full") from None

    def _free_slots(self, origin) -> None:
        self._origin_slots[origin].give()
        self._slots.give()

    def _idle_connection(self, key) -> _Connection | None:
        pool = self._idle.get(key)
        if not pool:
            return None
        now = self._loop.time()
        while pool:
            conn = pool.pop()
            if now - conn.idle_since <= self.keepalive_seconds and conn.alive():
                return conn
            conn.abort()
        return None

    def _keep(self, conn: _Connection) -> None:
        conn.in_use = False
        conn.idle_since = self._loop.time()
        pool = self._idle.get(conn.pool)
        if pool is None:
            pool = self._idle[conn.pool] = []
        pool.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + self.keepalive_seconds, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle `keepalive_seconds`, so that none is left for the upstream to
        close (uvicorn, for one, closes idle connections after 5 s) while the gateway is quiet."""
        self._sweeper = None
        # The timer may fire a hair early: what would expire within a millisecond goes now.
        horizon = self._loop.time() + 0.001 - self.keepalive_seconds
        oldest = None
        for pool in self._idle.values():
            kept = []
            for conn in pool:
                if conn.closed or conn.idle_since <= horizon:
                    conn.abort()
                else:
                    kept.append(conn)
            pool[:] = kept
            if kept and (oldest is None or kept[0].idle_since < oldest):
                oldest = kept[0].idle_since
        if oldest is not None:
            self._sweeper = self._loop.call_at(oldest + self.keepalive_seconds, self._sweep)

    def idle_connections(self) -> int:
        return sum(1 for pool in self._idle.values() for conn in pool if not conn.closed)

    async def close(self) -> None:
        """Close every connection, idle or in use (a read under way ends with UpstreamDropped)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.abort()
            conn.fail(UpstreamDropped("the gateway's upstream client was closed"))
        self._idle.clear()
