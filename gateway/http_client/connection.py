"""One connection to an origin, and the answer being read on it: an asyncio Protocol fed to
httptools' parser (llhttp, the parser uvicorn already uses for the gateway's own requests). It
holds the answer's head and body pieces for Response to read, pauses reading when a slow caller
lets too much pile up, and knows whether it may carry another request: only if its answer was read
to the end, nothing came after it, and its socket has nothing to read (no EOF, no stray bytes)."""

import asyncio
import select
from collections import deque

import httptools

from gateway.http_client.errors import UpstreamDropped

# A streamed answer's bytes held before reading from the upstream pauses (a slow caller).
PAUSE_BYTES = 256 * 1024
RESUME_BYTES = 64 * 1024


class _Connection(asyncio.Protocol):
    """One connection to an origin, and the answer being read on it (httptools' callbacks)."""

    def __init__(self, origin, pool, open_connections: set):
        self.origin = origin  # (https, host, port): whose slots it holds
        self.pool = pool  # which idle pool it goes back to: the origin, or (origin, Transport)
        self.open_connections = open_connections  # the client's: it closes them all when it closes
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.in_use = True
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.poller: select.poll | None = None
        self.begin()

    def begin(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.head_done = self.done = self.interim = False
        self.error: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.open_connections.add(self)
        # Polled on the descriptor: uvloop's socket object refuses recv, and a poll object made once
        # here keeps the check before each reuse to one syscall.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.poller = select.poll()
            self.poller.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # bytes nobody asked for, on an idle connection: never reuse it
            self.abort()
            return
        if self.done:
            # Bytes after the end of the answer asked for: whatever they are (a second answer, garbage),
            # the next request's answer could not be told apart from them, so the connection goes.
            self.keep_alive = False
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done:  # on_message_begin refused a second answer in the same read: as above
                self.keep_alive = False
                return
            self.fail(UpstreamDropped(f"the upstream's answer is not valid HTTP ({exc})"))
            self.abort()

    def connection_lost(self, exc) -> None:
        aborted = self.closed  # by the client itself: whatever was read is not a whole answer
        self.closed = True
        self.open_connections.discard(self)
        if self.done:
            return
        if exc is None and not aborted and self.head_done and self._ends_with_connection():
            self.done = True  # an answer delimited by the connection's end, ended cleanly: this was its end
            self._wake()
        elif exc is not None:  # a reset, even of an answer delimited by the connection's end, cuts it
            self.fail(UpstreamDropped(f"the upstream's connection failed before the end of its answer ({exc})"))
        else:
            self.fail(UpstreamDropped("the upstream closed the connection before the end of its answer"))

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # stops the parser: a second answer must not overwrite the first one's state
            raise _Surplus

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:  # an interim answer (103 Early Hints): the answer follows
            self.raw_headers = []
            self.interim = True
            return
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_BYTES and not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done = True
        self._wake()

    # --- the client's side ------------------------------------------------------------------

    def _ends_with_connection(self) -> bool:
        names = {name.lower() for name, _ in self.raw_headers}
        chunked = any(name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
                      for name, value in self.raw_headers)
        return b"content-length" not in names and not chunked

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the next callback (a head, a piece of the body, the end, an error), at most
        `timeout` seconds (TimeoutError)."""
        loop = self.loop
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes | None:
        """The next piece of the body held, if any (and reading resumes once little is held)."""
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < RESUME_BYTES and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def alive(self) -> bool:
        """Whether an idle connection may carry a request: not closing, and nothing to read on its
        socket. The loop may not have run since the upstream closed it or wrote to it; the kernel
        knows already (EOF, a reset or stray bytes all make the socket readable)."""
        if self.closed or self.transport.is_closing():
            return False
        return self.poller is None or not self.poller.poll(0)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Surplus(Exception):
    """Raised inside the parser to stop it at bytes that follow a complete answer."""


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream sent nothing within the read timeout"))
