"""gateway.http_client fails closed (issue #27): bytes beyond one complete answer close the
connection, and an answer larger than `max_response_bytes` (or a compressed one that inflates past
it) raises UpstreamTooLarge instead of growing memory. Raw loopback servers as in test_http_client."""

import asyncio
import tracemalloc
import zlib

import pytest

from gateway.http_client import UpstreamError, UpstreamTooLarge
from tests.test_http_client import Conn, Upstream, answer, answer_body, answering, client, scenario, until, within

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

MiB = 1024 * 1024


# --- bytes beyond one answer ---


@pytest.mark.parametrize("stray", [
    answer(b"not asked for"),  # a second whole answer
    b"HTTP/1.1 200 OK\r\nContent-Le",  # the start of one
    b"garbage that is not HTTP",
], ids=["second-answer", "part-of-an-answer", "garbage"])
@scenario
async def test_bytes_after_a_complete_answer_in_the_same_write_close_the_connection(stray):
    async def handler(conn: Conn):
        if upstream.conns.index(conn) == 0:
            await conn.request()
            await conn.send(answer(b"first") + stray)
            await conn.until_eof()
            return
        await answering(answer(b"fresh"))(conn)

    async with Upstream(handler) as upstream:
        async with client() as http:
            assert await answer_body(http, upstream.url()) == b"first"
            assert http.idle_connections() == 0
            assert await answer_body(http, upstream.url()) == b"fresh"
            assert upstream.connections == 2
            assert [len(conn.requests) for conn in upstream.conns] == [1, 1]
            await within(upstream.conns[0].eof.wait())


@scenario
async def test_bytes_after_a_complete_answer_arriving_before_release_close_the_connection():
    first_read = asyncio.Event()

    async def handler(conn: Conn):
        if upstream.conns.index(conn) == 0:
            await conn.request()
            await conn.send(answer(b"first"))
            await within(first_read.wait())  # a write of its own, after the answer was read
            await conn.send(answer(b"stray"))
            await conn.until_eof()
            return
        await answering(answer(b"fresh"))(conn)

    async with Upstream(handler) as upstream:
        async with client() as http:
            response = await within(http.post(upstream.url(), b"", {}))
            assert await within(response.read()) == b"first"
            first_read.set()
            # The stray answer reaches the client while the answer is held.
            await until(lambda: not response._conn.keep_alive, "the stray bytes to reach the client")
            response.release()
            assert http.idle_connections() == 0
            assert await answer_body(http, upstream.url()) == b"fresh"
            assert upstream.connections == 2


# --- max_response_bytes ---


def endless(unit: bytes, sent: list[int]):
    """A handler sending a chunked answer of `unit` pieces until the client goes away, counting the
    body bytes it wrote into `sent`."""

    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (len(unit), unit)
        while True:
            await conn.send(piece)
            sent[0] += len(unit)

    return handler


@scenario
async def test_an_oversized_content_length_is_refused_before_the_body_is_read():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nxyz" % (100 * MiB))
        await conn.until_eof()

    async with Upstream(handler) as upstream:
        async with client(max_response_bytes=MiB) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            with pytest.raises(UpstreamTooLarge) as caught:
                await within(response.read(), 0.5)  # at once: the server never sends the rest
            assert isinstance(caught.value, UpstreamError)
            assert str(MiB) in str(caught.value)
            response.release()
            assert http.idle_connections() == 0
            await within(upstream.conns[0].eof.wait())


@scenario
async def test_a_content_length_at_the_limit_is_read():
    async with Upstream(answering(answer(b"x" * 2048))) as upstream:
        async with client(max_response_bytes=2048) as http:
            assert await answer_body(http, upstream.url()) == b"x" * 2048
            assert http.idle_connections() == 1
        async with client(max_response_bytes=2047) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            await until(lambda: response._conn.done, "all of the answer")  # the fast path of read() checks it too
            with pytest.raises(UpstreamTooLarge):
                await within(response.read())
            response.release()
            assert http.idle_connections() == 0


@scenario
async def test_an_oversized_chunked_body_raises_before_it_is_all_read():
    sent = [0]
    async with Upstream(endless(b"c" * 65536, sent)) as upstream:
        async with client(max_response_bytes=MiB) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            tracemalloc.start()
            try:
                with pytest.raises(UpstreamTooLarge):
                    await within(response.read())
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            response.release()
            assert http.idle_connections() == 0
            await within(upstream.conns[0].eof.wait())
            assert sent[0] < 16 * MiB  # the server was stopped, not read to some end
            assert peak < 8 * MiB


@scenario
async def test_an_oversized_close_delimited_body_raises():
    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\n")
        while True:
            await conn.send(b"d" * 65536)

    async with Upstream(handler) as upstream:
        async with client(max_response_bytes=MiB) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            with pytest.raises(UpstreamTooLarge):
                await within(response.read())
            response.release()
            await within(upstream.conns[0].eof.wait())


@scenario
async def test_a_stream_has_no_total_limit():
    body = bytes(range(256)) * (3 * MiB // 256)

    async def handler(conn: Conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 65536):
            piece = body[start:start + 65536]
            await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await conn.send(b"0\r\n\r\n")
        await conn.until_eof()

    async with Upstream(handler) as upstream:
        async with client(max_response_bytes=MiB) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            received = bytearray()
            async for chunk in response.iter_chunks():
                received += chunk
            assert bytes(received) == body
            response.release()
            assert http.idle_connections() == 1


# --- compressed answers: the decoded size is bounded too ---


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """100 MB of zeros, gzip-compressed (about 100 kB), built a megabyte at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(MiB)
    return b"".join([packer.compress(zeros) for _ in range(100)] + [packer.flush()])


def gzip_answer(packed: bytes, chunked: bool) -> bytes:
    if not chunked:
        return answer(packed, "Content-Encoding: gzip")
    pieces = [packed[start:start + 8192] for start in range(0, len(packed), 8192)]
    return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n")


@pytest.mark.parametrize("how", ["read", "iter_chunks"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@scenario
async def test_a_gzip_bomb_raises_before_it_inflates_past_the_limit(gzip_bomb, how, chunked):
    assert len(gzip_bomb) < MiB  # what came over the wire is under the limit: only the decoded size is not
    async with Upstream(answering(gzip_answer(gzip_bomb, chunked))) as upstream:
        async with client(max_response_bytes=MiB) as http:
            response = await within(http.post(upstream.url(), b"", {}))
            tracemalloc.start()
            decoded = 0
            try:
                with pytest.raises(UpstreamTooLarge):
                    if how == "read":
                        await within(response.read())
                    else:
                        async for chunk in response.iter_chunks():
                            decoded += len(chunk)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            response.release()
            assert http.idle_connections() == 0
            assert decoded <= MiB
            assert peak < 8 * MiB


@pytest.mark.parametrize("limit, fits", [(50_000, True), (49_999, False)])
@scenario
async def test_a_gzip_answer_decoding_to_exactly_the_limit_is_read(limit, fits):
    plain = b"0123456789" * 5000
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    packed = packer.compress(plain) + packer.flush()
    async with Upstream(answering(gzip_answer(packed, chunked=True))) as upstream:
        async with client(max_response_bytes=limit) as http:
            if fits:
                assert await answer_body(http, upstream.url()) == plain
                assert http.idle_connections() == 1
            else:
                response = await within(http.post(upstream.url(), b"", {}))
                with pytest.raises(UpstreamTooLarge):
                    await within(response.read())
                response.release()
                assert http.idle_connections() == 0
