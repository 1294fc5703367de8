"""An upstream's answer as the pipeline sees it: status and headers, then the body read whole
(`read`, bounded by the client's `max_response_bytes`) or piece by piece (`iter_chunks`, for a
stream), decoded when the upstream gzip- or deflate-encoded it anyway; then `release` (the
connection goes back to its pool if it may) or `close` (a caller gone)."""

import zlib
from collections.abc import AsyncIterator

from gateway.http_client.connection import _Connection
from gateway.http_client.errors import UpstreamBadEncoding, UpstreamDropped, UpstreamTooLarge


class Response:
    """An upstream's answer: its status and headers are in; the body is read with `read` or
    `iter_chunks`, then `release` (back to the pool when read to its end) or `close`."""

    __slots__ = ("status", "raw_headers", "_conn", "_client", "_read_timeout", "_headers", "_decoder", "_room",
                 "_finished")

    def __init__(self, conn: _Connection, client, read_timeout: float):  # client: the HttpClient that sent it
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
