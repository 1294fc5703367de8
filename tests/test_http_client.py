"""gateway.http_client against raw loopback servers: each server is an `asyncio.start_server` in the
test's own loop that writes exact HTTP bytes, so every edge of the wire (chunk boundaries, early
closes, garbage, stalls, TLS) is under the test's control. No database."""

import asyncio
import datetime
import functools
import gzip
import inspect
import ipaddress
import socket
import ssl
import time
import zlib

import pytest
import uvloop

from gateway.http_client import (
    HttpClient,
    UpstreamConnectTimeout,
    UpstreamDropped,
    UpstreamError,
    UpstreamUnreachable,
)

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

PATH = "/v1/x?api-version=1"


# --- a raw HTTP server on loopback ---


class Request:
    def __init__(self, line: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.line, self.headers, self.body = line, headers, body

    def values(self, name: bytes) -> list[bytes]:
        """The values of every header named `name` (compared case-insensitively)."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


class Conn:
    """One accepted connection, seen from the server's side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.received = bytearray()
        self.requests: list[Request] = []
        self.got_request = asyncio.Event()
        self.eof = asyncio.Event()  # the client closed its side

    async def request(self) -> Request | None:
        """The next request on this connection, or None when the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.received += getattr(exc, "partial", b"")
            self.eof.set()
            return None
        self.received += head
        line, *lines = head[:-4].split(b"\r\n")
        headers = []
        for header in lines:
            name, _, value = header.partition(b":")
            headers.append((name, value.strip(b" \t")))
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        body = await self.reader.readexactly(int(lengths[0])) if lengths else b""
        self.received += body
        request = Request(line, headers, body)
        self.requests.append(request)
        self.got_request.set()
        return request

    async def until_eof(self) -> None:
        """Read (and keep) whatever comes until the client closes the connection."""
        try:
            while data := await self.reader.read(65536):
                self.received += data
        except ConnectionError:
            pass
        self.eof.set()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """`async with Upstream(handler) as upstream:` serves on a free loopback port; `handler(conn)`
    runs for each accepted connection."""

    def __init__(self, handler, ssl_context: ssl.SSLContext | None = None):
        self.handler, self.ssl_context = handler, ssl_context
        self.conns: list[Conn] = []
        self.tasks: list[asyncio.Task] = []
        self.accepted = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()
        for conn in self.conns:
            conn.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.wait_for(self.server.wait_closed(), 2)

    def url(self, path: str = PATH, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def connections(self) -> int:
        return len(self.conns)

    @property
    def requests(self) -> list[Request]:
        return [request for conn in self.conns for request in conn.requests]

    async def _accept(self, reader, writer):
        conn = Conn(reader, writer)
        self.conns.append(conn)
        self.tasks.append(asyncio.current_task())
        self.accepted.set()
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            conn.eof.set()
        except asyncio.CancelledError:
            pass  # stopped by __aexit__ (re-raising would make asyncio log the cancelled callback)


def answer(body: bytes = b"hello world", *headers: str, status: str = "200 OK") -> bytes:
    """A Content-Length answer with `headers` ("Name: value") before the Content-Length."""
    head = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body


def answering(*answers: bytes):
    """A handler answering the connection's requests with `answers` in turn (the last one repeated),
    then waiting for the client to close the connection."""

    async def handler(conn: Conn):
        index = 0
        while await conn.request() is not None:
            await conn.send(answers[min(index, len(answers) - 1)])
            index += 1

    return handler


async def silent(conn: Conn):
    """Reads whatever comes and never answers."""
    await conn.until_eof()


def client(**options) -> HttpClient:
    return HttpClient(**{"connect_timeout": 2.0, "read_timeout": 2.0, **options})


# The gateway runs on uvloop under uvicorn, and on asyncio's own loop wherever uvloop is absent: the
# client talks to both loops' transports, which differ (uvloop's socket objects refuse recv, its
# writes and closes are its own), so every scenario runs on each.
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def scenario(test):
    """An async test run in a fresh loop of each kind, bounded so that a hung client fails the test instead."""
    @functools.wraps(test)
    def run(*args, event_loop_kind, **kwargs):
        with asyncio.Runner(loop_factory=LOOPS[event_loop_kind]) as runner:
            return runner.run(asyncio.wait_for(test(*args, **kwargs), 8))

    signature = inspect.signature(test)
    run.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(), inspect.Parameter("event_loop_kind", inspect.Parameter.KEYWORD_ONLY)])
    return pytest.mark.parametrize("event_loop_kind", list(LOOPS))(run)


async def within(awaitable, seconds: float = 2.0):
    return await asyncio.wait_for(awaitable, seconds)


async def until(predicate, what: str, seconds: float = 2.0) -> None:
    """Wait for `predicate()` to hold, checked at every turn of the loop, at most `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, f"timed out after {seconds} s waiting for {what}"
        await asyncio.sleep(0.001)


def slot_waiters(http: HttpClient) -> int:
    """Requests waiting for a connection slot (the client's or an origin's)."""
    return len(http._slots.waiters) + sum(len(slots.waiters) for slots in http._origin_slots.values())


def fake_dns(http: HttpClient, addresses: list[tuple[int, tuple]]) -> list[tuple[str, int]]:
    """Make `http` resolve every name to `addresses`; returns the lookups made."""
    lookups = []

    async def lookup(host, port):
        lookups.append((host, port))
        return addresses

    http._lookup = lookup
    return lookups


async def answer_body(http: HttpClient, url: str, body: bytes = b"") -> bytes:
    """POST, read the whole answer and give the connection back: each bounded by within()."""
    response = await within(http.post(url, body, {}))
    data = await within(response.read())
    response.release()
    return data


# --- a Content-Length answer, and the request as the server received it ---


@scenario
async def test_content_length_answer_and_the_request_sent():
    reply = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Request-Id: abc-123\r\n"
             b"x-lower: \xe9t\xe9\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
    async with Upstream(answering(reply)) as upstream:
        async with client() as http:
            body = b'{"model":"gpt","input":"\xc3\xa9"}'
            response = await within(http.post(upstream.url(), body, {
                "Authorization": "Bearer sk-test", "content-type": "application/json",
                "X-Trace-ID": "t-1"}))
            assert response.status == 201
            assert response.raw_headers == [
                (b"Content-Type", b"application/json"), (b"X-Request-Id", b"abc-123"),
                (b"x-lower", b"\xe9t\xe9"), (b"Content-Length", b"11")]
            assert response.header("x-request-id") == "abc-123"
            assert response.header("X-REQUEST-ID") == "abc-123"
            assert response.header("Content-Type") == "application/json"
            assert response.header("X-Lower") == "\u00e9t\u00e9"  # latin-1 decoded
            assert response.header("x-missing") is None
            assert response.header("x-missing", "fallback") == "fallback"
            assert await within(response.read()) == b'{"ok":true}'
            response.release()

            [request] = upstream.requests
            assert request.line == b"POST /v1/x?api-version=1 HTTP/1.1"
            assert request.values(b"host") == [f"127.0.0.1:{upstream.port}".encode()]
            assert request.values(b"content-length") == [str(len(body)).encode()]
            for name, value in [(b"Authorization", b"Bearer sk-test"), (b"content-type", b"application/json"),
                                (b"X-Trace-ID", b"t-1")]:
                assert [(n, v) for n, v in request.headers if n.lower() == name.lower()] == [(name, value)]
            assert request.values(b"accept-encoding") == []
            assert request.body == body


@scenario
async def test_an_empty_body_is_sent_with_content_length_zero():
    async with Upstream(answering(answer(b"", status="204 No Content"))) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url("/v1/empty"), b"", {}))
            assert response.status == 204
            assert await within(response.read()) == b""
            response.release()
            [request] = upstream.requests
            assert request.line == b"POST /v1/empty HTTP/1.1"
            assert request.values(b"content-length") == [b"0"]
            assert request.body == b""


@scenario
async def test_an_interim_answer_is_skipped_for_the_answer_after_it():
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    async with Upstream(answering(interim + answer(b"final", "X-Kind: final"), answer(b"again"))) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"{}", {}))
            assert response.status == 200
            assert response.raw_headers == [(b"X-Kind", b"final"), (b"Content-Length", b"5")]
            assert await within(response.read()) == b"final"
            response.release()
            second = await within(http.post(upstream.url(), b"{}", {}))  # the connection is still in step
            assert (second.status, await within(second.read())) == (200, b"again")
            second.release()
            assert upstream.connections == 1


# --- keep-alive ---


@scenario
async def test_keep_alive_reuses_one_connection():
    async with Upstream(answering(answer(b"first"), answer(b"second"))) as upstream:
        async with client() as http:
            assert http.idle_connections() == 0
            assert await answer_body(http, upstream.url(), b"1") == b"first"
            assert http.idle_connections() == 1

            response = await within(http.post(upstream.url(), b"2", {}))
            assert http.idle_connections() == 0  # in use
            assert await within(response.read()) == b"second"
            response.release()
            assert http.idle_connections() == 1
            assert upstream.connections == 1
            assert [request.body for request in upstream.requests] == [b"1", b"2"]
        assert http.idle_connections() == 0
        await within(upstream.conns[0].eof.wait())  # close() closed the pooled connection


@scenario
async def test_release_before_the_body_is_read_closes_the_connection():
    async with Upstream(answering(answer(b"x" * 1000))) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert response.status == 200
            response.release()  # body not read: the connection cannot be reused
            assert http.idle_connections() == 0
            await within(upstream.conns[0].eof.wait())

            assert await answer_body(http, upstream.url()) == b"x" * 1000
            assert upstream.connections == 2
            assert http.idle_connections() == 1


@scenario
async def test_response_close_closes_the_connection():
    async with Upstream(answering(answer(b"body"))) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert await within(response.read()) == b"body"
            response.close()
            assert http.idle_connections() == 0
            await within(upstream.conns[0].eof.wait())


# --- close() with a connection in use, max_connections, large bodies, Host ---


@scenario
async def test_close_after_release_leaves_the_pooled_connection_to_its_next_request():
    async with Upstream(answering(answer(b"first"), answer(b"second"))) as upstream:
        async with client() as http:
            first = await within(http.post(upstream.url(), b"", {}))
            assert await within(first.read()) == b"first"
            first.release()
            second = await within(http.post(upstream.url(), b"", {}))  # the same connection
            first.close()  # late (a watcher of the first caller): not the first answer's connection any more
            assert await within(second.read()) == b"second"
            second.release()
            assert (upstream.connections, http.idle_connections()) == (1, 1)


@scenario
async def test_client_close_closes_connections_in_use_too():
    async with Upstream(answering(answer(b"x" * 10))) as upstream:
        http = client()
        response = await within(http.post(upstream.url(), b"", {}))
        try:
            assert response.status == 200
            await http.close()  # "closes every connection": the one in use as well
            try:
                await within(upstream.conns[0].eof.wait(), 1.0)
            except TimeoutError:
                pytest.fail("HttpClient.close() left the connection of an unreleased response open")
            assert http.idle_connections() == 0
        finally:
            response.close()


@scenario
async def test_max_connections_bounds_connections_in_use():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(max_connections=1) as http:
            first = await within(http.post(upstream.url(), b"1", {}))
            second = asyncio.create_task(http.post(upstream.url(), b"2", {}))
            await until(lambda: slot_waiters(http) == 1, "the second request to wait for a slot")
            assert not second.done()  # waits for the only connection
            assert len(upstream.requests) == 1
            assert await within(first.read()) == b"ok"
            first.release()
            response = await within(second)
            assert await within(response.read()) == b"ok"
            response.release()
            assert upstream.connections == 1
            assert [request.body for request in upstream.requests] == [b"1", b"2"]


@scenario
async def test_large_request_and_answer_bodies_arrive_whole():
    sent = bytes(range(256)) * 1024  # 256 KiB
    big = bytes(reversed(range(256))) * 4096  # 1 MiB

    async def handler(conn: Conn):
        while (request := await conn.request()) is not None:
            await conn.send(answer(big) if request.body == sent else answer(b"wrong body", status="400 Bad"))

    async with Upstream(handler) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), sent, {}))
            assert response.status == 200
            assert await within(response.read()) == big

            response.release()
            response = await within(http.post(upstream.url(), sent, {}))
            received = bytearray()
            async for chunk in response.iter_chunks():  # a slow reader: the upstream is paused, then resumed
                received += chunk
                await asyncio.sleep(0.001)
            assert bytes(received) == big
            response.release()
            assert upstream.connections == 1


@scenario
async def test_an_answer_larger_than_the_pause_threshold_read_after_it_arrived_leaves_the_connection_usable():
    big = b"y" * (256 * 1024 + 5000)
    async with Upstream(answering(answer(big), answer(b"small"))) as upstream:
        async with client(read_timeout=1.0) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            # All of the answer the client takes before the body is read: all of it, or the reads
            # paused past the threshold.
            await until(lambda: response._conn.done or response._conn.paused, "the answer to be taken in")
            assert await within(response.read()) == big
            response.release()
            assert http.idle_connections() == 1
            # The pooled connection must still read: a transport paused for the big answer and
            # never resumed would leave this post waiting for its head until the read timeout.
            assert await answer_body(http, upstream.url()) == b"small"
            assert upstream.connections == 1


@scenario
async def test_host_header_leaves_out_the_scheme_default_port():
    # Port 80 is never bound: the name resolves (fake_dns) to this test's server, which reads the
    # head a server on port 80 would. Breaks caught: ":80" kept in the Host header, or the port
    # dropped from a non-default one.
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client() as http:
            lookups = fake_dns(http, [(socket.AF_INET, ("127.0.0.1", upstream.port))])
            for url in ("http://upstream.test/v1/x", "http://upstream.test:80/v1/x", "http://upstream.test:8080/v1/x"):
                assert await answer_body(http, url) == b"ok"
            assert [request.values(b"host") for request in upstream.requests] == [
                [b"upstream.test"], [b"upstream.test"], [b"upstream.test:8080"]]
            # The first two are one origin (port 80, looked up once); the third is another.
            assert lookups == [("upstream.test", 80), ("upstream.test", 8080)]


# --- chunked answers stream ---


@scenario
async def test_chunked_answer_streams_chunks_as_they_arrive_then_reuses_the_connection():
    go_on = asyncio.Event()

    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await within(go_on.wait())
        await conn.send(b"6\r\n world\r\n")
        await conn.send(b"0\r\n\r\n")
        await answering(answer(b"again"))(conn)

    async with Upstream(handler) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"{}", {}))
            assert response.status == 200
            assert response.header("transfer-encoding") == "chunked"
            chunks = response.iter_chunks().__aiter__()
            # The server sends the rest only once the test has the first chunk: streaming.
            assert await within(chunks.__anext__()) == b"hello"
            go_on.set()
            rest = [chunk async for chunk in chunks]
            assert b"".join(rest) == b" world"
            response.release()
            assert http.idle_connections() == 1

            assert await answer_body(http, upstream.url(), b"{}") == b"again"
            assert upstream.connections == 1


@scenario
async def test_chunked_answer_read_whole_with_extensions_and_trailers():
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3;name=value\r\nabc\r\n"
             b"A\r\n0123456789\r\n"
             b"0\r\nX-Trailer: t\r\n\r\n")
    async with Upstream(answering(reply, answer(b"next"))) as upstream:
        async with client() as http:
            assert await answer_body(http, upstream.url()) == b"abc0123456789"
            assert http.idle_connections() == 1
            assert await answer_body(http, upstream.url()) == b"next"
            assert upstream.connections == 1


# --- close-delimited answers ---


@scenario
async def test_close_delimited_answer_reads_to_eof_and_is_not_reused():
    body = b"all of it, " * 500

    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        await conn.send(body[:100])
        await asyncio.sleep(0.05)
        await conn.send(body[100:])
        conn.close()

    async with Upstream(handler) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert response.status == 200
            assert await within(response.read()) == body
            response.release()
            assert http.idle_connections() == 0

            assert await answer_body(http, upstream.url()) == body
            assert upstream.connections == 2


# --- Connection: close from the server ---


@scenario
async def test_connection_close_answer_is_not_reused():
    # The server keeps its side open: only the header tells the client not to reuse.
    async with Upstream(answering(answer(b"bye", "Connection: close"))) as upstream:
        async with client() as http:
            assert await answer_body(http, upstream.url(), b"1") == b"bye"
            assert http.idle_connections() == 0
            await within(upstream.conns[0].eof.wait())

            assert await answer_body(http, upstream.url(), b"2") == b"bye"
            assert upstream.connections == 2
            assert [conn.requests[0].body for conn in upstream.conns] == [b"1", b"2"]


# --- Content-Encoding ---


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
])
@scenario
async def test_content_encoding_is_decoded_by_read(encoding, compress):
    plain = b'{"choices":[{"text":"' + b"compressible " * 200 + b'"}]}'
    async with Upstream(answering(answer(compress(plain), f"Content-Encoding: {encoding}"))) as upstream:
        async with client() as http:
            assert await answer_body(http, upstream.url()) == plain
            assert http.idle_connections() == 1


@scenario
async def test_gzip_chunked_answer_is_decoded_by_iter_chunks():
    plain = b"data: " + b"streamed and compressed " * 300 + b"\n\n"
    packed = gzip.compress(plain)
    third = len(packed) // 3
    pieces = [packed[:third], packed[third:2 * third], packed[2 * third:]]
    reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply += b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    async with Upstream(answering(reply)) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert b"".join([chunk async for chunk in response.iter_chunks()]) == plain
            response.release()


# --- answers that end early or are not HTTP ---


@scenario
async def test_server_closing_mid_body_raises_upstream_dropped():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        conn.close()

    async with Upstream(handler) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert response.status == 200
            with pytest.raises(UpstreamDropped):
                await within(response.read())
            response.release()
            assert http.idle_connections() == 0


@scenario
async def test_server_closing_mid_chunked_stream_raises_upstream_dropped_from_iter_chunks():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        conn.close()

    async with Upstream(handler) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            received = []
            with pytest.raises(UpstreamDropped):
                async for chunk in response.iter_chunks():
                    received.append(chunk)
            assert b"".join(received) == b"hello"
            response.release()
            assert http.idle_connections() == 0


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\nnot http at all",
    b"HTTP/1.1 abc Weird\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nok",
    b"",  # closed without a byte of answer
], ids=["not-http", "bad-status", "bad-length", "nothing"])
@scenario
async def test_an_answer_that_is_not_http_raises_upstream_dropped(reply):
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(reply)
        await asyncio.sleep(0.1)
        conn.close()

    async with Upstream(handler) as upstream:
        async with client() as http:
            with pytest.raises(UpstreamDropped) as caught:
                await within(http.post(upstream.url(), b"", {}))
            assert not isinstance(caught.value, TimeoutError)
            assert http.idle_connections() == 0


# --- connecting ---


@scenario
async def test_connection_refused_is_unreachable_not_a_timeout():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with client() as http:
        with pytest.raises(UpstreamUnreachable) as caught:
            await within(http.post(f"http://127.0.0.1:{port}/v1/x", b"", {}))
        assert not isinstance(caught.value, TimeoutError)
        assert not isinstance(caught.value, UpstreamConnectTimeout)
        assert isinstance(caught.value, UpstreamError)
        assert http.idle_connections() == 0


@scenario
async def test_unknown_host_is_unreachable():
    async with client() as http:
        with pytest.raises(UpstreamUnreachable):
            await within(http.post("http://no-such-host.invalid/v1/x", b"", {}))


@scenario
async def test_a_tls_handshake_that_never_completes_is_a_connect_timeout():
    # A plain TCP server that accepts and never answers: the TLS handshake counts as connecting.
    async with Upstream(silent) as upstream:
        async with client(connect_timeout=0.2, read_timeout=2.0) as http:
            started = time.monotonic()
            with pytest.raises(UpstreamConnectTimeout) as caught:
                await within(http.post(upstream.url(scheme="https"), b"", {}))
            elapsed = time.monotonic() - started
            assert isinstance(caught.value, UpstreamUnreachable)
            assert isinstance(caught.value, TimeoutError)
            assert 0.15 <= elapsed < 1.5
            assert upstream.requests == []
            await within(upstream.conns[0].eof.wait())  # the half-open connection was closed
            assert http.idle_connections() == 0


# --- read timeouts ---


@scenario
async def test_no_answer_within_read_timeout_raises_timeout_error():
    async with Upstream(silent) as upstream:
        async with client(connect_timeout=2.0, read_timeout=0.2) as http:
            started = time.monotonic()
            with pytest.raises(TimeoutError) as caught:
                await within(http.post(upstream.url(), b"{}", {}))
            elapsed = time.monotonic() - started
            assert not isinstance(caught.value, UpstreamError)
            assert not isinstance(caught.value, UpstreamConnectTimeout)
            assert 0.15 <= elapsed < 1.5
            assert upstream.conns[0].received.startswith(b"POST /v1/x?api-version=1 HTTP/1.1\r\n")
            assert http.idle_connections() == 0


@scenario
async def test_a_body_that_stalls_raises_timeout_error_from_read():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await conn.until_eof()

    async with Upstream(handler) as upstream:
        async with client(connect_timeout=2.0, read_timeout=0.2) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert response.status == 200
            with pytest.raises(TimeoutError) as caught:
                await within(response.read())
            assert not isinstance(caught.value, UpstreamError)
            response.close()
            assert http.idle_connections() == 0
            await within(upstream.conns[0].eof.wait())


@scenario
async def test_a_stream_that_stalls_raises_timeout_error_from_iter_chunks():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await conn.until_eof()

    async with Upstream(handler) as upstream:
        async with client(connect_timeout=2.0, read_timeout=0.2) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            chunks = response.iter_chunks().__aiter__()
            assert await within(chunks.__anext__()) == b"hello"
            with pytest.raises(TimeoutError) as caught:
                await within(chunks.__anext__())
            assert not isinstance(caught.value, UpstreamError)
            response.close()


@scenario
async def test_read_timeout_is_between_bytes_not_for_the_whole_body():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"abcdef":  # 0.6 s in all, never 0.3 s without a byte
            await asyncio.sleep(0.1)
            await conn.send(bytes([byte]))
        await conn.until_eof()

    async with Upstream(handler) as upstream:
        async with client(connect_timeout=2.0, read_timeout=0.3) as http:
            assert await answer_body(http, upstream.url()) == b"abcdef"
            assert http.idle_connections() == 1


# --- the pool drops connections it cannot reuse ---


@scenario
async def test_a_connection_the_server_closed_while_idle_is_not_used_again():
    close_now, closed = asyncio.Event(), asyncio.Event()

    async def handler(conn: Conn):
        if upstream.conns.index(conn) == 0:
            await conn.request()
            await conn.send(answer(b"first"))
            await within(close_now.wait())
            conn.close()  # the server ends the idle keep-alive connection
            await conn.writer.wait_closed()
            closed.set()
            return
        await answering(answer(b"second"))(conn)

    async with Upstream(handler) as upstream:
        async with client() as http:
            assert await answer_body(http, upstream.url()) == b"first"
            assert http.idle_connections() == 1
            close_now.set()
            await within(closed.wait())  # the FIN is out (on loopback, in the client's kernel)

            response = await within(http.post(upstream.url(), b"again", {}))
            assert response.status == 200
            assert await within(response.read()) == b"second"
            response.release()
            assert upstream.connections == 2
            assert [len(conn.requests) for conn in upstream.conns] == [1, 1]
            assert upstream.conns[1].requests[0].body == b"again"
            assert http.idle_connections() == 1


@scenario
async def test_a_connection_idle_longer_than_keepalive_seconds_is_not_reused():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(keepalive_seconds=0.1) as http:
            assert await answer_body(http, upstream.url()) == b"ok"
            await asyncio.sleep(0.3)

            assert await answer_body(http, upstream.url()) == b"ok"
            assert upstream.connections == 2
            await within(upstream.conns[0].eof.wait())  # the expired connection was closed, not leaked


@scenario
async def test_a_connection_idle_shorter_than_keepalive_seconds_is_reused():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(keepalive_seconds=2.0) as http:
            for _ in range(2):
                assert await answer_body(http, upstream.url()) == b"ok"
                await asyncio.sleep(0.2)
            assert upstream.connections == 1


@scenario
async def test_concurrent_posts_use_separate_connections():
    both_in = asyncio.Event()

    async def handler(conn: Conn):
        await conn.request()
        if len(upstream.requests) == 2:
            both_in.set()
        await within(both_in.wait())
        await conn.send(answer(str(upstream.conns.index(conn)).encode()))
        await answering(answer(b"later"))(conn)

    async with Upstream(handler) as upstream:
        async with client() as http:
            responses = await within(asyncio.gather(
                http.post(upstream.url(), b"a", {}), http.post(upstream.url(), b"b", {})))
            bodies = sorted([await within(response.read()) for response in responses])
            assert bodies == [b"0", b"1"]
            for response in responses:
                response.release()
            assert upstream.connections == 2
            assert http.idle_connections() == 2
        assert http.idle_connections() == 0
        await within(asyncio.gather(*(conn.eof.wait() for conn in upstream.conns)))


# --- header injection ---


@pytest.mark.parametrize("headers", [
    {"x-a": "b\r\nx-evil: 1"},
    {"x-a": "b\nx-evil: 1"},
    {"x-a": "b\rx-evil: 1"},
    {"x-a\r\nx-evil": "1"},
], ids=["crlf-in-value", "lf-in-value", "cr-in-value", "crlf-in-name"])
@scenario
async def test_cr_or_lf_in_a_header_raises_value_error_before_anything_is_sent(headers):
    async with Upstream(silent) as upstream:
        async with client() as http:
            with pytest.raises(ValueError):
                await within(http.post(upstream.url(), b"body", headers))
            await asyncio.sleep(0.1)  # anything sent would have arrived by now
            assert all(conn.received == b"" for conn in upstream.conns)
            assert upstream.requests == []


# --- https ---


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_context(self_signed) -> ssl.SSLContext:
    cert_path, key_path = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


@scenario
async def test_https_with_a_trusted_self_signed_certificate(self_signed):
    reply = answer(b'{"tls":true}', "Content-Type: application/json")
    async with Upstream(answering(reply), ssl_context=server_context(self_signed)) as upstream:
        async with client(ssl_context=ssl.create_default_context(cafile=str(self_signed[0]))) as http:
            for body in (b"one", b"two"):
                response = await within(http.post(upstream.url(scheme="https"), body,
                                                  {"Authorization": "Bearer k"}))
                assert response.status == 200
                assert response.header("content-type") == "application/json"
                assert await within(response.read()) == b'{"tls":true}'
                response.release()
            assert http.idle_connections() == 1
            assert upstream.connections == 1
            first, second = upstream.requests
            assert first.line == b"POST /v1/x?api-version=1 HTTP/1.1"
            assert first.values(b"host") == [f"127.0.0.1:{upstream.port}".encode()]
            assert first.values(b"authorization") == [b"Bearer k"]
            assert (first.body, second.body) == (b"one", b"two")


@scenario
async def test_https_with_an_untrusted_certificate_is_unreachable(self_signed):
    async with Upstream(answering(answer()), ssl_context=server_context(self_signed)) as upstream:
        async with client() as http:  # the default context: the self-signed certificate is not trusted
            with pytest.raises(UpstreamUnreachable) as caught:
                await within(http.post(upstream.url(scheme="https"), b"", {}))
            assert not isinstance(caught.value, TimeoutError)
            assert upstream.requests == []
            assert http.idle_connections() == 0


# --- cancellation ---


@scenario
async def test_cancelling_a_post_closes_its_connection():
    async def handler(conn: Conn):
        await conn.request()
        await conn.until_eof()  # never answers

    async with Upstream(handler) as upstream:
        async with client() as http:
            task = asyncio.create_task(http.post(upstream.url(), b"{}", {}))
            await within(upstream.accepted.wait())
            await within(upstream.conns[0].got_request.wait())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await within(upstream.conns[0].eof.wait())
            assert http.idle_connections() == 0

            # The client still works afterwards, on a new connection.
            upstream.handler = answering(answer(b"after"))
            assert await answer_body(http, upstream.url()) == b"after"
            assert upstream.connections == 2
