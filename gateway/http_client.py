"""The gateway's upstream client: HTTP/1.1 POSTs over keep-alive connections, one pool per origin.

Why not aiohttp's ClientSession, which carried this traffic first: per request it builds a
ClientRequest (a dozen `update_*` steps), merges header multidicts, parses the URL, arms several
timers and wraps the body in a payload object. On this machine that was ~300 µs of the gateway's
~790 µs of CPU per request at 16 in flight, about as much as the gateway's own steps and the
ledger together (bench/gateway.py; README, Performance). A gateway sends one kind of request — a
POST of a body already in memory, to a few origins — so this client does only that: the request
head is one f-string, the answer is parsed by httptools (llhttp, the parser uvicorn already uses
for the gateway's own requests), and a connection goes back to its pool once its answer has been
read to the end.

What it does, and how it fails (the pipeline turns each error into the caller's answer):
- http and https (the standard library's TLS, the system's trust store by default), the URL's path
  and query as given, Host and Content-Length set here, no Accept-Encoding asked (an answer that
  is gzip- or deflate-encoded anyway is decoded);
- answers with Content-Length, chunked, or delimited by the connection's end; `Connection: close`,
  answers read only in part, and connections that received anything after their answer's end are
  never reused; a pooled connection is reused only if it is still live (its socket has nothing to
  read: no EOF, no stray bytes), and closed once idle `keepalive_seconds` by a timer;
- at most `max_connections` in use, and `max_connections_per_origin` to one origin (so one stuck
  upstream cannot take every slot); waiting for a slot counts against the connect timeout;
- names resolved by the loop's getaddrinfo and kept `dns_ttl_seconds`; several addresses are tried
  as RFC 8305 says (families interleaved, the next attempt started every 250 ms or when one fails);
- `UpstreamUnreachable` when no connection could be made (refused, DNS, TLS), its subclass
  `UpstreamConnectTimeout` past `connect_timeout` (slot wait, DNS, TCP and TLS together), and its
  subclass `UpstreamPoolFull` when the time went waiting for a slot;
  `UpstreamDropped` when the connection ends (or is reset), or the answer stops being HTTP, before
  its end; `UpstreamBadEncoding` for a Content-Encoding other than gzip or deflate (raised by
  `post`, before any byte of the body) or an encoded body that does not decode; `UpstreamTooLarge`
  for a whole answer above `max_response_bytes`, or an encoded one that decodes to more;
  the builtin `TimeoutError` when no byte came for `read_timeout` seconds while the head or a
  piece of the body was awaited (a stream may last for minutes as long as bytes keep coming);
- a request is never sent twice: once a byte of it may have reached the kernel, a connection that
  fails is the caller's error. Only a write refused at its first byte (the pooled connection was
  reset while idle) is sent again, once, on a fresh connection;
- an egress proxy (`https_proxy` for https origins, tunnelled with CONNECT; `http_proxy` for http
  origins, sent the request in absolute form), with Basic credentials from the proxy URL that appear
  in no message; `no_proxy` as curl reads it (loopback goes through the proxy unless named there);
  `UpstreamProxyRefused` when the proxy answers CONNECT with anything but 200;
- `tls_context()`: the system's trust store plus a private CA bundle, and a client certificate;
- a `Transport` per request (a facade's own proxy, CA bundle, client certificate and key): its
  connections are pooled apart, keyed by origin and transport, so none made with one facade's TLS
  or proxy settings carries another's requests; its TLS context is built once per distinct
  (CA bundle, certificate, key) and kept; `UpstreamSettingUnusable` when one of its files cannot be
  loaded or its proxy URL is not usable (the message names the setting, never a file's contents or
  the proxy's credentials). Requests without one take the path they always took.
"""

import asyncio
import base64
import ipaddress
import select
import socket
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

import httptools

# A streamed answer's bytes held before reading from the upstream pauses (a slow caller).
PAUSE_BYTES = 256 * 1024
RESUME_BYTES = 64 * 1024
# RFC 8305's "Connection Attempt Delay": the next address is tried if the last gave no answer by then.
HAPPY_EYEBALLS_DELAY = 0.25


class UpstreamError(Exception):
    """Any failure talking to the upstream."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be made: refused, DNS, TLS handshake."""


class UpstreamConnectTimeout(UpstreamUnreachable, TimeoutError):
    """Connecting (slot wait, DNS, TCP and TLS) took longer than the client's connect timeout."""


class UpstreamProxyRefused(UpstreamUnreachable):
    """The egress proxy answered CONNECT with something other than 200 (its status is in the message)."""


class UpstreamSettingUnusable(UpstreamUnreachable):
    """A facade's (or the gateway's) CA bundle, client certificate or key cannot be loaded, or its
    proxy URL cannot be used: the message names the setting and the path, never a file's contents
    or the proxy's credentials."""


class UpstreamPoolFull(UpstreamConnectTimeout):
    """The connect timeout passed while every connection slot (the client's, or the origin's) was in use."""


class UpstreamDropped(UpstreamError):
    """The connection ended, or the answer stopped being HTTP, before the answer's end."""


class UpstreamTooLarge(UpstreamError):
    """A whole answer read with `read`, or what an encoded answer decodes to, is larger than the
    client's `max_response_bytes`."""


class UpstreamBadEncoding(UpstreamError):
    """The answer's Content-Encoding is not one the client decodes, or its body does not decode."""


@lru_cache(maxsize=512)
def _target(url: str) -> tuple[tuple[bool, str, int], str, str]:
    """(origin: (https, host, port), Host header, request target) of a URL, worked out once per URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    https = parts.scheme == "https"
    default = 443 if https else 80
    port = parts.port or default
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (https, parts.hostname, port), host if port == default else f"{host}:{port}", target


def _head(target: str, host: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {length}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # Every line break is one this function wrote: a name or value bringing its own would split the head.
    breaks = len(headers) + 4  # the request line, host, content-length, each header, the blank line
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("a header name or value of the upstream request contains a line break")
    return head.encode("latin-1")


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


class Response:
    """An upstream's answer: its status and headers are in; the body is read with `read` or
    `iter_chunks`, then `release` (back to the pool when read to its end) or `close`."""

    __slots__ = ("status", "raw_headers", "_conn", "_client", "_read_timeout", "_headers", "_decoder", "_room",
                 "_finished")

    def __init__(self, conn: _Connection, client: "HttpClient", read_timeout: float):
        self.status = conn.status
        self._read_timeout = read_timeout
        self.raw_headers = conn.raw_headers
        self._conn = conn
        self._client = client
        self._headers: dict[str, str] | None = None
        self._decoder = None
        self._room = client.max_response_bytes  # decoded bytes this answer may still yield
        self._finished = False
        encoding = self.header("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, told apart by zlib
        elif encoding not in ("identity", ""):
            # Raised from post(), before any byte of the body: passing on bytes nobody can read is no answer.
            raise UpstreamBadEncoding(f"the upstream's answer is encoded with {encoding}, which the gateway "
                                      "does not decode")

    def header(self, name: str, default: str | None = None) -> str | None:
        if self._headers is None:
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}
        return self._headers.get(name.lower(), default)

    async def read(self) -> bytes:
        """The whole body (decoded), at most the client's `max_response_bytes` (UpstreamTooLarge)."""
        conn, limit = self._conn, self._client.max_response_bytes
        if conn.done and conn.error is None and self._decoder is None:  # the usual case: all of it is in
            if conn.buffered > limit:
                raise self._too_large()
            body = b"".join(conn.chunks)
            conn.chunks.clear()
            conn.buffered = 0
            if conn.paused:  # the whole answer came in the read that crossed PAUSE_BYTES
                conn.paused = False
                conn.transport.resume_reading()
            return body
        length = self.header("content-length")
        if length is not None and int(length) > limit:  # refused before a byte of it is held
            raise self._too_large()
        body, total = [], 0
        async for chunk in self.iter_chunks():
            total += len(chunk)
            if total > limit:
                raise self._too_large()
            body.append(chunk)
        return b"".join(body)

    def _too_large(self) -> UpstreamTooLarge:
        self._conn.abort()  # the rest of the answer is unread: the connection cannot be reused
        return UpstreamTooLarge(f"the upstream's answer is larger than the gateway's limit of "
                                f"{self._client.max_response_bytes} bytes")

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (decoded), with no limit on the total but what an encoded
        answer decodes to (UpstreamTooLarge past `max_response_bytes`)."""
        conn, decoder, timeout = self._conn, self._decoder, self._read_timeout
        encoded = False
        while True:
            chunk = conn.take()
            if chunk is not None:
                if decoder is not None:
                    encoded = True
                    chunk = self._decode(chunk)
                if chunk:
                    yield chunk
                continue
            if conn.error is not None:
                raise conn.error
            if conn.done:
                if decoder is not None:
                    if rest := self._bounded(decoder.flush()):
                        yield rest
                    if encoded and not decoder.eof:  # the HTTP framing ended, the compressed stream did not
                        raise UpstreamBadEncoding("the upstream's encoded answer ends before its compressed stream does")
                return
            await conn.wait(timeout)

    def _decode(self, chunk: bytes) -> bytes:
        # max_length: a small compressed answer that inflates without end (a zip bomb) stops one byte
        # past the limit instead of being inflated whole into memory first.
        try:
            return self._bounded(self._decoder.decompress(chunk, self._room + 1))
        except zlib.error as exc:
            raise UpstreamBadEncoding(f"the upstream's encoded answer could not be decoded ({exc})") from None

    def _bounded(self, decoded: bytes) -> bytes:
        if len(decoded) > self._room:
            raise self._too_large()
        self._room -= len(decoded)
        return decoded

    def release(self) -> None:
        """Back to the pool if the answer was read to its end and the connection may be kept."""
        if self._finished:
            return
        self._finished = True
        conn = self._conn
        if conn.done and conn.keep_alive and not conn.closed and conn.error is None and not conn.chunks:
            self._client._keep(conn)
        else:
            conn.abort()
        self._client._free_slots(conn.origin)

    def close(self) -> None:
        """Close the connection now (a caller gone: stop reading); a read under way ends with
        UpstreamDropped. Once released, the connection is no longer this answer's: nothing to do."""
        if self._finished:
            return
        self._conn.abort()
        self._conn.fail(UpstreamDropped("the connection to the upstream was closed by the gateway"))
        self.release()


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


class HttpClient:
    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int = 2000,
                 max_connections_per_origin: int = 1000, keepalive_seconds: float = 4.0,
                 max_response_bytes: int = 64 * 1024 * 1024, dns_ttl_seconds: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, https_proxy: str = "", http_proxy: str = "",
                 no_proxy: str = "", ca_bundle: str = "", client_cert: str = "", client_key: str = ""):
        """`ca_bundle`, `client_cert` and `client_key` are the files of `ssl_context` (which is built
        from them when not given): a Transport that sets some of its own takes the rest from them."""
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_connections_per_origin = max_connections_per_origin
        self.keepalive_seconds = keepalive_seconds
        self.max_response_bytes = max_response_bytes
        self.dns_ttl_seconds = dns_ttl_seconds
        self.tls_files = (ca_bundle, client_cert, client_key)
        if ssl_context is None and (ca_bundle or client_cert):
            ssl_context = tls_context(ca_bundle, client_cert, client_key)
        self.ssl_context = ssl_context
        self._contexts: dict[tuple[str, str, str], ssl.SSLContext] = {}  # (CA bundle, cert, key): its context
        self._proxies = {True: _Proxy.parse(https_proxy), False: _Proxy.parse(http_proxy)}  # by https
        self._no_proxy = _NoProxy(no_proxy)
        # Pool keys: an origin, or (origin, Transport) for a request with its own transport.
        self._routes: dict[tuple, _Proxy | None] = {}  # pool key: its proxy (None: direct), decided once
        self._idle: dict[tuple, list[_Connection]] = {}  # by pool key, oldest first: reuse takes the newest
        self._open: set[_Connection] = set()  # every connection not yet lost, idle or in use
        self._slots = _Slots(max_connections)  # connections in use at once
        self._origin_slots: dict[tuple, _Slots] = {}  # the same, per origin
        self._dns: dict[tuple[str, int], tuple[float, list]] = {}  # (host, port): (expiry, addresses)
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, connect_timeout: float | None = None,
                   read_timeout: float | None = None, transport: "Transport | None" = None) -> Response:
        """Send a POST and return once the answer's status and headers are in. The timeouts, when
        given, replace the client's for this request (the gateway reads them from its settings);
        `transport`, when given, is the facade's own proxy and TLS files (see Transport)."""
        connect_timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        origin, host, target = _target(url)
        if transport is None:
            pool = origin
            proxy = self._routes[origin] if origin in self._routes else self._route(origin)
        else:
            pool = (origin, transport)
            proxy = self._routes[pool] if pool in self._routes else self._route_own(pool, transport)
        if proxy is not None and not origin[0]:  # plain http through a proxy: the absolute form, and its credentials
            target = f"http://{host}{target}"
            if proxy.authorization:
                headers = {**headers, "proxy-authorization": proxy.authorization}
        head = _head(target, host, len(body), headers)
        loop = self._loop or self._bind()
        origin_slots = self._origin_slots.get(origin) or self._add_origin(origin)
        total = self._slots
        if origin_slots.free and total.free and not origin_slots.waiters and not total.waiters:
            origin_slots.free -= 1
            total.free -= 1
        else:
            started = loop.time()
            await self._wait_for_slots(origin, origin_slots, connect_timeout)
            connect_timeout -= loop.time() - started
        conn = None
        try:
            conn = self._idle_connection(pool) or await self._connect(origin, pool, connect_timeout)
            conn.in_use = True
            conn.begin()
            wire = conn.transport
            wire.writelines((head, body))
            if wire.is_closing():
                # Both loops' transports send at once when nothing is queued, and close at once when
                # that send fails: a failed first send wrote nothing, so the request may go again.
                conn.abort()
                conn = await self._connect(origin, pool, connect_timeout)
                conn.transport.writelines((head, body))
                if conn.transport.is_closing():
                    raise UpstreamDropped("the connection to the upstream failed before the request could be sent")
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(read_timeout)
            return Response(conn, self, read_timeout)
        except BaseException:
            if conn is not None:
                conn.abort()
            self._free_slots(origin)
            raise

    def _route(self, origin) -> "_Proxy | None":
        https, host, _ = origin
        proxy = self._proxies[https]
        if proxy is not None and self._no_proxy.matches(host):
            proxy = None
        self._routes[origin] = proxy
        return proxy

    def _route_own(self, pool, transport: "Transport") -> "_Proxy | None":
        """A transport's proxy: its own for both schemes (NO_PROXY does not apply: the facade named
        it), none at all for "none", or the client's as for any request when it names none."""
        origin, _ = pool
        if not transport.proxy:
            proxy = self._routes[origin] if origin in self._routes else self._route(origin)
        elif transport.proxy == DIRECT:
            proxy = None
        else:
            try:
                proxy = _Proxy.parse(transport.proxy)
            except ValueError as exc:
                raise UpstreamSettingUnusable(f"the facade's upstream_proxy cannot be used: {exc}") from None
        self._routes[pool] = proxy
        return proxy

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

    async def _connect(self, origin, pool, timeout: float) -> _Connection:
        https, host, port = origin
        loop = self._loop
        context = None
        if https:
            context = self.ssl_context or _default_context()
            if pool is not origin and pool[1].tls:
                context = self._own_context(pool[1])
        proxy = self._routes[pool]
        try:
            async with asyncio.timeout(timeout):
                if proxy is None:
                    sock = await _happy_eyeballs(loop, await self._resolve(host, port))
                else:
                    sock = await _happy_eyeballs(loop, await self._resolve(proxy.host, proxy.port))
                    if https:
                        await _tunnel(loop, sock, host, port, proxy)
                # create_connection(sock=...): uvloop's has no happy_eyeballs_delay, so the race is run above.
                _, conn = await loop.create_connection(lambda: _Connection(origin, pool, self._open), sock=sock,
                                                       ssl=context, server_hostname=host if https else None)
        except TimeoutError:
            raise UpstreamConnectTimeout(f"no connection to {host}:{port}{_via(proxy)} within {timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror), TLS (ssl.SSLError)
            raise UpstreamUnreachable(f"no connection to {host}:{port}{_via(proxy)} ({exc})") from exc
        return conn

    async def _resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """(family, socket address) for each address of `host`, in the order to try them."""
        key = (host, port)
        now = self._loop.time()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = _literal(host, port) or _interleave(await self._lookup(host, port))
        if not addresses:
            raise socket.gaierror(f"{host} has no address")
        if len(self._dns) >= 1024:  # names come from facades, a short list; this only bounds a mistake
            self._dns.clear()
        self._dns[key] = (now + self.dns_ttl_seconds, addresses)
        return addresses

    async def _lookup(self, host: str, port: int) -> list[tuple[int, tuple]]:
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, address) for family, _, _, _, address in infos]

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

    def _own_context(self, transport: "Transport") -> ssl.SSLContext:
        """The TLS context of a transport's files, each blank one taken from the client's (a
        certificate and its key go together), built the first time a connection needs it."""
        ca_bundle, client_cert, client_key = self.tls_files
        files = (transport.ca_bundle or ca_bundle,
                 *((transport.client_cert, transport.client_key) if transport.client_cert else (client_cert, client_key)))
        context = self._contexts.get(files)
        if context is None:  # named as the facade's setting or the gateway's, whichever the file came from
            settings = ("the facade's upstream_ca_bundle" if transport.ca_bundle else GATEWAY_TLS_SETTINGS[0],
                        *(("the facade's upstream_client_cert", "the facade's upstream_client_key")
                          if transport.client_cert else GATEWAY_TLS_SETTINGS[1:]))
            context = self._contexts[files] = tls_context(*files, settings=settings)
        return context

    def idle_connections(self) -> int:
        return sum(1 for pool in self._idle.values() for conn in pool if not conn.closed)

    async def __aenter__(self) -> "HttpClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection, idle or in use (a read under way ends with UpstreamDropped)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.abort()
            conn.fail(UpstreamDropped("the gateway's upstream client was closed"))
        self._idle.clear()


class _Proxy:
    """An egress proxy: where it listens, and the Proxy-Authorization its URL's credentials make.
    Its repr and `name` leave the credentials out: they are in no message and no log."""

    __slots__ = ("host", "port", "authorization", "name")

    def __init__(self, host: str, port: int, authorization: str | None):
        self.host, self.port, self.authorization = host, port, authorization
        self.name = f"http://{host}:{port}"

    def __repr__(self) -> str:
        return f"_Proxy({self.name})"

    @classmethod
    def parse(cls, url: str) -> "_Proxy | None":
        if not url:
            return None
        parts = urlsplit(url if "://" in url else f"http://{url}")  # no scheme: http, as curl takes it
        if parts.scheme != "http" or not parts.hostname:
            # Named without the URL: it may carry credentials.
            raise ValueError(f"the upstream proxy must be an http:// URL with a host, not a {parts.scheme}:// one")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)


# A facade's upstream_proxy that sends its traffic straight to the upstream, whatever the gateway's proxy.
DIRECT = "none"


@dataclass(frozen=True, slots=True)
class Transport:
    """A facade's own way to its upstream; each blank field is the client's own setting. `proxy`:
    an http:// URL (with Basic credentials, if any) for both schemes, or DIRECT; the others: paths
    of PEM files (a CA bundle added to the system's trust store, a client certificate, its key
    when not in the certificate's file). Hashable: requests with equal transports share a pool."""

    proxy: str = ""
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca_bundle or self.client_cert)

    def __repr__(self) -> str:  # the proxy's credentials are in no repr, so in no log
        return (f"Transport(proxy={redact_proxy_url(self.proxy)!r}, ca_bundle={self.ca_bundle!r}, "
                f"client_cert={self.client_cert!r}, client_key={self.client_key!r})")


def redact_proxy_url(url: str) -> str:
    """A proxy URL as it may be shown: scheme, host and port, no credentials."""
    if not url or url == DIRECT:
        return url
    try:
        proxy = _Proxy.parse(url)
    except ValueError:
        return "(not an http:// proxy URL)"
    return proxy.name


def check_proxy_url(url: str) -> None:
    """The rule for a facade's upstream_proxy: http://[user:password@]host[:port] and nothing else
    (ValueError otherwise, with a message that never repeats the URL: it may carry credentials)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # its message may quote part of the URL
        parts, port = urlsplit("http://invalid"), -1
    if parts.scheme != "http" or not url.startswith("http://") or not parts.hostname:
        raise ValueError("An upstream proxy is an http:// URL with a host: http://[user:password@]host:port.")
    if port == -1 or parts.path not in ("", "/") or parts.query or parts.fragment or any(c in url for c in " \t\r\n"):
        raise ValueError("An upstream proxy URL is http://[user:password@]host:port with a numeric port and "
                         "nothing after it (no path, query or spaces).")


def _via(proxy: _Proxy | None) -> str:
    return "" if proxy is None else f" through the proxy {proxy.name}"


class _NoProxy:
    """NO_PROXY as curl reads it: `*` for every host; otherwise names, each matching itself and its
    sub-domains (a leading dot changes nothing), and IP addresses or CIDR ranges matching the
    addresses in them. Nothing is exempt by default, not even localhost: a proxy that must not see
    loopback traffic is told so here."""

    def __init__(self, value: str):
        entries = [entry.strip().lower() for entry in value.split(",") if entry.strip()]
        self.everything = "*" in entries
        self.names: list[str] = []
        self.networks: list = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.append(entry.lstrip("."))

    def matches(self, host: str) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(host == name or host.endswith("." + name) for name in self.names)
        return any(address in network for network in self.networks) or host in self.names


async def _tunnel(loop, sock: socket.socket, host: str, port: int, proxy: _Proxy) -> None:
    """CONNECT through `proxy` on the connected socket `sock`; TLS to the origin starts once it returns."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
    if proxy.authorization:
        request += f"proxy-authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode("latin-1"))
    answer = b""
    while b"\r\n\r\n" not in answer:
        more = await loop.sock_recv(sock, 4096)
        if not more or len(answer) > 65536:
            raise UpstreamProxyRefused(f"the proxy {proxy.name} did not answer CONNECT {authority}")
        answer += more
    head, _, rest = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")[:200]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or parts[1] != "200":
        raise UpstreamProxyRefused(f"the proxy {proxy.name} refused CONNECT {authority}: {status_line}")
    if rest:  # the origin's TLS has not started: nothing may follow the proxy's answer yet
        raise UpstreamProxyRefused(f"the proxy {proxy.name} sent bytes after its answer to CONNECT {authority}")


# The settings tls_context() names when one of its files cannot be loaded.
GATEWAY_TLS_SETTINGS = ("GATEWAY_UPSTREAM_CA_BUNDLE", "GATEWAY_UPSTREAM_CLIENT_CERT", "GATEWAY_UPSTREAM_CLIENT_KEY")


def tls_context(ca_bundle: str = "", client_cert: str = "", client_key: str = "", *,
                settings: tuple[str, str, str] = GATEWAY_TLS_SETTINGS) -> ssl.SSLContext:
    """The client's TLS settings: the system's trust store, with the certificates of `ca_bundle` (a PEM
    file) ADDED to it, never replacing it (an upstream with a public certificate stays reachable
    when a private CA is configured for another); and `client_cert` (with `client_key`, or a PEM
    holding both) presented to upstreams that ask for one (mTLS). A file that cannot be loaded is
    UpstreamSettingUnusable, naming its setting (`settings`: the CA bundle's, the certificate's and
    the key's) and path: neither OpenSSL's message nor the OS's holds a file's contents."""
    context = ssl.create_default_context()
    ca_setting, cert_setting, key_setting = settings
    what = ""
    try:
        if ca_bundle:
            what = f"{ca_setting} ({ca_bundle})"
            context.load_verify_locations(cafile=ca_bundle)
        if client_cert:
            what = f"{cert_setting} ({client_cert})" + (f" with {key_setting} ({client_key})" if client_key else "")
            context.load_cert_chain(client_cert, client_key or None)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a path with a NUL byte, a ValueError
        reason = getattr(exc, "strerror", None) or exc
        raise UpstreamSettingUnusable(f"{what} could not be loaded: {reason}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def _literal(host: str, port: int) -> list[tuple[int, tuple]] | None:
    """An IP address needs no lookup (and no trip to the resolver's thread)."""
    for family, address in ((socket.AF_INET, (host, port)), (socket.AF_INET6, (host, port, 0, 0))):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, address)]
    return None


def _interleave(addresses: list[tuple[int, tuple]]) -> list[tuple[int, tuple]]:
    """RFC 8305, section 4: the resolver's order kept within each family, the families taken in
    turn, starting with the resolver's first (so one family that does not route costs one delay)."""
    families: dict[int, list] = {}
    for family, address in addresses:
        if (family, address) not in families.setdefault(family, []):
            families[family].append((family, address))
    queues = list(families.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


async def _happy_eyeballs(loop, addresses: list[tuple[int, tuple]]) -> socket.socket:
    """A connected socket to the first address that answers: an attempt is started every
    HAPPY_EYEBALLS_DELAY, or as soon as the last one failed; the losers are closed."""
    if len(addresses) == 1:
        return await _attempt(loop, *addresses[0])
    pending: set[asyncio.Task] = set()
    errors: list[OSError] = []
    queue = iter(addresses)
    try:
        while True:
            address = next(queue, None)
            if address is not None:
                pending.add(loop.create_task(_attempt(loop, *address)))
            elif not pending:
                raise errors[0] if len(errors) == 1 else OSError(
                    f"every address failed ({'; '.join(str(error) for error in errors)})")
            done, pending = await asyncio.wait(pending, timeout=HAPPY_EYEBALLS_DELAY if address else None,
                                               return_when=asyncio.FIRST_COMPLETED)
            winner = None
            for task in done:
                if task.exception() is None:
                    if winner is None:
                        winner = task.result()
                    else:
                        task.result().close()
                else:
                    errors.append(task.exception())
            if winner is not None:
                return winner
    finally:
        for task in pending:
            task.cancel()
            task.add_done_callback(_close_connected)


def _close_connected(task: asyncio.Task) -> None:
    """A losing attempt that connected anyway, after the race was decided."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _attempt(loop, family: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


@lru_cache(maxsize=1)
def _default_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context
