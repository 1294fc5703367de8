"""gateway.http_client's pool (issue #29): only live connections reused, a request sent again only
when no byte of it was written, idle connections closed by a timer, bounded waits for a slot (per
origin too), Happy Eyeballs with a DNS cache, and cut or undecodable answers as errors. Each
scenario runs on asyncio's loop and on uvloop (tests.test_http_client.scenario)."""

import asyncio
import gzip
import socket
import struct
import time

import pytest

from gateway.http_client import (
    HttpClient,
    UpstreamBadEncoding,
    UpstreamConnectTimeout,
    UpstreamDropped,
    UpstreamError,
    UpstreamPoolFull,
    UpstreamUnreachable,
)
from gateway.http_client.connection import _Connection
from gateway.http_client.happy_eyeballs import _interleave
from tests.test_http_client import (
    Conn,
    Upstream,
    answer,
    answer_body,
    answering,
    client,
    fake_dns,
    scenario,
    silent,
    slot_waiters,
    until,
    within,
)

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

# --- a server the test drives by hand ---


class RawServer:
    """A listening socket whose connections the test reads, writes and closes itself, each step at
    the moment the test says: an asyncio server closes a connection only when the loop runs again,
    and by then the client's side may have seen it first, which is the race these tests are about."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.requests: list[tuple[int, bytes]] = []  # (connection index, request body)

    def url(self, path: str = "/v1/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def accept(self) -> socket.socket:
        sock, _ = await asyncio.get_running_loop().sock_accept(self.listener)
        sock.setblocking(False)
        self.socks.append(sock)
        return sock

    async def request(self, sock: socket.socket) -> bytes | None:
        """The next request's body on `sock`, or None at its end (EOF or a reset)."""
        loop, data = asyncio.get_running_loop(), b""
        try:
            while b"\r\n\r\n" not in data:
                if not (more := await loop.sock_recv(sock, 65536)):
                    return None
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            while len(body) < length:
                body += await loop.sock_recv(sock, 65536)
        except ConnectionError:
            return None
        self.requests.append((self.socks.index(sock), body))
        return body

    async def send(self, sock: socket.socket, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(sock, data)

    @staticmethod
    def reset(sock: socket.socket) -> None:
        """Close with an RST (SO_LINGER 0), now."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.listener.close()


@pytest.fixture
def raw():
    server = RawServer()
    yield server
    server.close()


async def serve_once(raw: RawServer, reply: bytes) -> socket.socket:
    """Accept a connection, read one request and answer it."""
    sock = await raw.accept()
    await raw.request(sock)
    await raw.send(sock, reply)
    return sock


def kernel_catches_up(http: HttpClient) -> None:
    """Wait without letting the loop run until what the server did (a FIN, a reset, stray bytes) has
    reached the client's kernel: its idle connection's socket reads as ready, while the client's
    loop has not yet seen any of it."""
    [conn] = [conn for pool in http._idle.values() for conn in pool]
    assert conn.poller.poll(2000), "what the server did never reached the client's socket"


# --- only live connections are reused ---


@pytest.mark.parametrize("how", ["fin", "rst", "stray-bytes"])
@scenario
async def test_a_pooled_connection_closed_just_before_reuse_is_not_used(raw, how):
    first = asyncio.create_task(serve_once(raw, answer(b"first")))
    async with client() as http:
        assert await answer_body(http, raw.url(), b"1") == b"first"
        sock = await within(first)
        assert http.idle_connections() == 1

        second = asyncio.create_task(serve_once(raw, answer(b"second")))  # runs once the client waits
        if how == "fin":
            sock.shutdown(socket.SHUT_WR)  # the server can still read: it would see a request sent here
        elif how == "rst":
            raw.reset(sock)
        else:
            sock.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
        kernel_catches_up(http)
        # Awaited directly: within() would run it as a task, letting the loop see the close first.
        response = await http.post(raw.url(), b"2", {})
        assert (response.status, await within(response.read())) == (200, b"second")
        response.release()
        await within(second)

        assert len(raw.socks) == 2
        assert raw.requests == [(0, b"1"), (1, b"2")]  # the second request reached the server once
        if how != "rst":
            sock.setblocking(True)
            sock.settimeout(2)
            try:
                assert sock.recv(65536) == b""  # nothing more came on the first connection: it was closed
            except ConnectionResetError:
                pass  # closed by the client with data unread: as good


@scenario
async def test_a_request_whose_first_write_fails_is_sent_once_more_on_a_fresh_connection(raw, monkeypatch):
    # Without the liveness check, the reset lands between the check and the write: the write fails
    # at its first byte, so nothing was sent and the client may send it again.
    monkeypatch.setattr(_Connection, "alive", lambda self: not self.closed)
    first = asyncio.create_task(serve_once(raw, answer(b"first")))
    async with client() as http:
        assert await answer_body(http, raw.url(), b"1") == b"first"
        sock = await within(first)

        second = asyncio.create_task(serve_once(raw, answer(b"second")))
        raw.reset(sock)
        kernel_catches_up(http)
        response = await http.post(raw.url(), b"2", {})  # directly, as above
        assert (response.status, await within(response.read())) == (200, b"second")
        response.release()
        await within(second)
        assert len(raw.socks) == 2
        assert raw.requests == [(0, b"1"), (1, b"2")]


@scenario
async def test_a_request_written_to_a_connection_the_server_half_closed_is_not_sent_again(raw, monkeypatch):
    # The FIN is missed (no liveness check): the write succeeds, so the request may have been read.
    monkeypatch.setattr(_Connection, "alive", lambda self: not self.closed)
    first = asyncio.create_task(serve_once(raw, answer(b"first")))
    async with client() as http:
        assert await answer_body(http, raw.url(), b"1") == b"first"
        sock = await within(first)
        sock.shutdown(socket.SHUT_WR)
        kernel_catches_up(http)
        reader = asyncio.create_task(raw.request(sock))
        connects = count_connects(http)
        with pytest.raises(UpstreamDropped):
            await http.post(raw.url(), b"2", {})  # directly, as above
        assert await within(reader) == b"2"  # it did arrive
        assert connects == []  # and was not sent again: no other connection was opened for it
        assert raw.requests == [(0, b"1"), (0, b"2")]


@scenario
async def test_a_connection_the_server_closes_after_reading_a_request_is_not_retried():
    async def handler(conn: Conn):
        await conn.request()
        conn.close()

    async with Upstream(handler) as upstream:
        async with client() as http:
            connects = count_connects(http)
            with pytest.raises(UpstreamDropped):
                await within(http.post(upstream.url(), b"once", {}))
            assert len(connects) == 1  # counted as the client connects: no wait for a retry
            assert upstream.connections == 1
            assert [request.body for request in upstream.requests] == [b"once"]
            assert http.idle_connections() == 0


@scenario
async def test_a_server_that_reads_the_second_request_then_closes_is_the_callers_error():
    # Break caught: a client that sends a request again once a byte of it was written (here, on a
    # fresh connection after the server closed the one it read it on): the server would have done
    # the work twice.
    async def handler(conn: Conn):
        if conn is not upstream.conns[0]:  # a request sent again: read, and closed on like the first
            await conn.request()
            conn.close()
            return
        await conn.request()
        await conn.send(answer(b"first"))
        await conn.request()  # read, whole, before the connection closes
        conn.close()

    async with Upstream(handler) as upstream:
        async with client() as http:
            connects = count_connects(http)
            assert await answer_body(http, upstream.url(), b"1") == b"first"
            with pytest.raises((UpstreamError, TimeoutError)) as caught:
                await within(http.post(upstream.url(), b"2", {}))
            # Counted by the client as it connects: no wait for a retry that may still be on its way.
            assert len(connects) == 1
            assert [request.body for request in upstream.conns[0].requests] == [b"1", b"2"]
            assert [request.body for request in upstream.requests] == [b"1", b"2"]
            assert isinstance(caught.value, UpstreamDropped), caught.value  # the caller's error, at once
            assert http.idle_connections() == 0


def count_connects(http: HttpClient) -> list:
    """Every new connection `http` opens, recorded as it is opened."""
    connects = []
    connect = http._connect

    async def counting(*args, **kwargs):
        connects.append(args)
        return await connect(*args, **kwargs)

    http._connect = counting
    return connects


# --- idle connections close by time ---


@scenario
async def test_an_idle_connection_is_closed_by_a_timer_not_only_when_next_picked():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(keepalive_seconds=0.2) as http:
            assert await answer_body(http, upstream.url()) == b"ok"
            assert http.idle_connections() == 1
            started = time.monotonic()
            await within(upstream.conns[0].eof.wait())  # with no request after it
            assert 0.15 <= time.monotonic() - started < 1.0
            assert http.idle_connections() == 0
            assert await answer_body(http, upstream.url()) == b"ok"  # the timer is armed again
            await within(upstream.conns[1].eof.wait())


@scenario
async def test_the_timer_closes_only_what_has_been_idle_long_enough():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(keepalive_seconds=0.4) as http:
            first = await within(http.post(upstream.url(), b"", {}))
            second = await within(http.post(upstream.url(), b"", {}))
            await within(first.read())
            first.release()
            await asyncio.sleep(0.25)
            await within(second.read())
            second.release()
            assert http.idle_connections() == 2
            await asyncio.sleep(0.25)  # the first is past 0.4 s idle, the second is not
            assert http.idle_connections() == 1
            await asyncio.sleep(0.3)
            assert http.idle_connections() == 0


# --- slots: the client's and each origin's ---


@scenario
async def test_waiting_for_a_slot_ends_at_the_connect_timeout_with_upstream_pool_full():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(max_connections_per_origin=1, connect_timeout=0.3) as http:
            held = await within(http.post(upstream.url(), b"", {}))
            started = time.monotonic()
            with pytest.raises(UpstreamPoolFull) as caught:
                await within(http.post(upstream.url(), b"", {}))
            assert 0.25 <= time.monotonic() - started < 1.0
            assert isinstance(caught.value, UpstreamConnectTimeout)
            assert isinstance(caught.value, UpstreamUnreachable)
            assert isinstance(caught.value, TimeoutError)
            assert "pool was full" in str(caught.value)
            assert "1 connections to this origin" in str(caught.value)
            await within(held.read())
            held.release()
            assert await answer_body(http, upstream.url()) == b"ok"  # the slots all came back
            assert upstream.connections == 1


@scenario
async def test_the_clients_total_limit_is_a_pool_full_too():
    async with Upstream(answering(answer(b"ok"))) as one, Upstream(answering(answer(b"ok"))) as other:
        async with client(max_connections=1, connect_timeout=0.3) as http:
            held = await within(http.post(one.url(), b"", {}))
            with pytest.raises(UpstreamPoolFull) as caught:
                await within(http.post(other.url(), b"", {}))
            assert "1 connections of the client" in str(caught.value)
            held.close()
            assert await answer_body(http, other.url()) == b"ok"


@scenario
async def test_a_slot_freed_while_waiting_is_taken_within_the_timeout():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(max_connections_per_origin=1, connect_timeout=1.0) as http:
            held = await within(http.post(upstream.url(), b"", {}))
            waiting = asyncio.create_task(answer_body(http, upstream.url()))
            await until(lambda: slot_waiters(http) == 1, "the second request to wait for a slot")
            assert not waiting.done()
            await within(held.read())
            held.release()
            assert await within(waiting) == b"ok"
            assert upstream.connections == 1  # the released connection served the waiter


@scenario
async def test_a_waiter_cancelled_while_waiting_for_a_slot_leaves_the_slot_to_the_next():
    async with Upstream(answering(answer(b"ok"))) as upstream:
        async with client(max_connections_per_origin=1, connect_timeout=2.0) as http:
            held = await within(http.post(upstream.url(), b"", {}))
            gone = asyncio.create_task(http.post(upstream.url(), b"", {}))
            waiting = asyncio.create_task(answer_body(http, upstream.url()))
            await until(lambda: slot_waiters(http) == 2, "both requests to wait for the slot")
            await within(held.read())
            held.release()  # hands the slot to `gone`, which is cancelled before it runs
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert await within(waiting, 0.5) == b"ok"
            assert await answer_body(http, upstream.url()) == b"ok"


@scenario
async def test_one_origin_at_its_cap_does_not_block_another():
    async with Upstream(silent) as stuck, Upstream(answering(answer(b"fine"))) as healthy:
        async with client(max_connections=4, max_connections_per_origin=2, connect_timeout=0.5,
                          read_timeout=5.0) as http:
            hung = [asyncio.create_task(http.post(stuck.url(), b"", {})) for _ in range(4)]
            await until(lambda: slot_waiters(http) == 2 and stuck.connections >= 2, "two requests in, two waiting")
            assert stuck.connections == 2  # two in flight, two waiting for the origin's slots
            started = time.monotonic()
            for _ in range(3):
                assert await answer_body(http, healthy.url()) == b"fine"
            assert time.monotonic() - started < 0.3
            results = await within(asyncio.gather(*hung[2:], return_exceptions=True))
            assert [type(result) for result in results] == [UpstreamPoolFull, UpstreamPoolFull]
            for task in hung[:2]:
                task.cancel()
            await asyncio.gather(*hung[:2], return_exceptions=True)


# --- resolving and Happy Eyeballs ---


def test_addresses_are_interleaved_by_family_starting_with_the_resolvers_first():
    v6 = [(socket.AF_INET6, (f"2001:db8::{i}", 443, 0, 0)) for i in (1, 2, 3)]
    v4 = [(socket.AF_INET, (f"192.0.2.{i}", 443)) for i in (1, 2)]
    assert _interleave(v6 + v4) == [v6[0], v4[0], v6[1], v4[1], v6[2]]
    assert _interleave(v4 + v6) == [v4[0], v6[0], v4[1], v6[1], v6[2]]
    assert _interleave([v4[0], v4[0], v6[0]]) == [v4[0], v6[0]]  # a repeated address is tried once
    assert _interleave([]) == []


def blackhole(family: int, host: str) -> tuple[tuple, list[socket.socket]]:
    """An address where a connection attempt hangs (no answer, no refusal): a listening socket whose
    accept queue is full, so the kernel drops further SYNs as an unrouted address would."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(0)
    address = listener.getsockname()
    held = [listener]
    for _ in range(4):
        filler = socket.socket(family, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(address)
        held.append(filler)
        time.sleep(0.01)
    return address, held


@scenario
async def test_an_ipv6_address_that_never_answers_falls_back_to_ipv4_quickly():
    dead, held = blackhole(socket.AF_INET6, "::1")
    try:
        async with Upstream(answering(answer(b"over ipv4"))) as upstream:
            async with client(connect_timeout=3.0) as http:
                fake_dns(http, [(socket.AF_INET6, dead), (socket.AF_INET, ("127.0.0.1", upstream.port))])
                started = time.monotonic()
                url = f"http://upstream.test:{upstream.port}/v1/x"
                assert await answer_body(http, url) == b"over ipv4"
                elapsed = time.monotonic() - started
                assert 0.2 <= elapsed < 1.0  # one attempt delay, far below the connect timeout
                [request] = upstream.requests
                assert request.values(b"host") == [f"upstream.test:{upstream.port}".encode()]
    finally:
        for sock in held:
            sock.close()


@scenario
async def test_a_refused_first_address_starts_the_next_at_once():
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    address = refused.getsockname()
    refused.close()
    async with Upstream(answering(answer(b"second address"))) as upstream:
        async with client() as http:
            fake_dns(http, [(socket.AF_INET, address), (socket.AF_INET, ("127.0.0.1", upstream.port))])
            started = time.monotonic()
            assert await answer_body(http, f"http://upstream.test:{upstream.port}/") == b"second address"
            assert time.monotonic() - started < 0.2  # no attempt delay waited


@scenario
async def test_every_address_failing_is_unreachable_and_hanging_ones_a_connect_timeout():
    refused = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        refused.append((socket.AF_INET, sock.getsockname()))
        sock.close()
    async with client(connect_timeout=0.6) as http:
        fake_dns(http, refused)
        with pytest.raises(UpstreamUnreachable) as caught:
            await within(http.post("http://upstream.test/", b"", {}))
        assert not isinstance(caught.value, TimeoutError)

    dead, held = blackhole(socket.AF_INET, "127.0.0.1")
    try:
        async with client(connect_timeout=0.6) as http:
            fake_dns(http, [(socket.AF_INET, dead), (socket.AF_INET, dead)])
            started = time.monotonic()
            with pytest.raises(UpstreamConnectTimeout):
                await within(http.post("http://upstream.test/", b"", {}))
            assert 0.5 <= time.monotonic() - started < 1.5
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("ttl, lookups_made", [(30.0, 1), (0.0, 2)])
@scenario
async def test_a_resolved_name_is_kept_for_the_dns_ttl(ttl, lookups_made):
    async with Upstream(answering(answer(b"bye", "Connection: close"))) as upstream:
        async with client(dns_ttl_seconds=ttl) as http:
            lookups = fake_dns(http, [(socket.AF_INET, ("127.0.0.1", upstream.port))])
            for _ in range(2):  # Connection: close, so each request connects again
                assert await answer_body(http, f"http://upstream.test:{upstream.port}/") == b"bye"
            assert upstream.connections == 2
            assert len(lookups) == lookups_made


@scenario
async def test_a_name_is_resolved_by_the_loop():
    async with Upstream(answering(answer(b"by name"))) as upstream:
        async with client() as http:
            assert await answer_body(http, f"http://localhost:{upstream.port}/") == b"by name"


# --- cut and undecodable answers ---


@scenario
async def test_a_close_delimited_answer_ended_by_a_reset_is_dropped_not_complete(raw):
    head_in = asyncio.Event()

    async def serve():
        sock = await raw.accept()
        await raw.request(sock)
        await raw.send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart of the answer")
        await within(head_in.wait())  # reset once the client has read what came before it
        raw.reset(sock)

    server = asyncio.create_task(serve())
    async with client() as http:
        response = await within(http.post(raw.url(), b"", {}))
        assert response.status == 200
        head_in.set()
        with pytest.raises(UpstreamDropped):
            await within(response.read())
        response.release()
        assert http.idle_connections() == 0
    await within(server)


@scenario
async def test_a_close_delimited_stream_ended_by_a_reset_raises_from_iter_chunks(raw):
    first_in = asyncio.Event()

    async def serve():
        sock = await raw.accept()
        await raw.request(sock)
        await raw.send(sock, b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n")
        await within(first_in.wait())  # reset once the client has the event sent before it
        raw.reset(sock)

    server = asyncio.create_task(serve())
    async with client() as http:
        response = await within(http.post(raw.url(), b"", {}))
        received = []
        with pytest.raises(UpstreamDropped):
            async for chunk in response.iter_chunks():
                received.append(chunk)
                first_in.set()
        assert b"".join(received) == b"data: 1\n\n"
        response.release()
    await within(server)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
@scenario
async def test_an_encoding_the_client_cannot_decode_raises_before_any_body_byte(encoding):
    replies = [answer(b"\x8b\x00 bytes nobody can read", f"Content-Encoding: {encoding}"), answer(b"plain")]

    async def handler(conn: Conn):
        while await conn.request() is not None:
            await conn.send(replies.pop(0) if len(replies) > 1 else replies[0])

    async with Upstream(handler) as upstream:
        async with client() as http:
            with pytest.raises(UpstreamBadEncoding) as caught:
                await within(http.post(upstream.url(), b"", {}))
            assert encoding in str(caught.value)
            assert http.idle_connections() == 0
            assert await answer_body(http, upstream.url()) == b"plain"  # the client's slots came back


@pytest.mark.parametrize("body", [
    b"\x1f\x8b\x08\x00garbage that is not deflate",
    gzip.compress(b"a complete answer, compressed " * 20)[:-30],  # the compressed stream cut short
], ids=["corrupt", "truncated"])
@pytest.mark.parametrize("how", ["read", "iter_chunks"])
@scenario
async def test_a_gzip_body_that_does_not_decode_raises_upstream_bad_encoding(body, how):
    async with Upstream(answering(answer(body, "Content-Encoding: gzip"))) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            with pytest.raises(UpstreamBadEncoding):
                if how == "read":
                    await within(response.read())
                else:
                    async for _ in response.iter_chunks():
                        pass
            response.release()


@scenario
async def test_an_empty_body_labelled_gzip_is_empty():
    async with Upstream(answering(answer(b"", "Content-Encoding: gzip"))) as upstream:
        async with client() as http:
            assert await answer_body(http, upstream.url()) == b""
