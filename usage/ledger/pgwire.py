"""The ledger's round trip to PostgreSQL on the gateway's hot path: one text of several statements
sent with libpq on a psycopg connection, and its results read back.

psycopg's cursors do much more than a batch needs (query conversion, result sets, loaders, row
factories), and on the hot path that CPU is paid for every batch (docs/performance.md). Here the
text goes out with `psycopg.pq` (psycopg's public libpq wrapper) and the few values the writer
reads come back as text. The connection stays psycopg's (its pool opens, checks and closes it);
`run` only needs it idle or inside a transaction, never used by anything else meanwhile.
"""

import asyncio

import psycopg
from psycopg import errors, pq

FATAL = pq.ExecStatus.FATAL_ERROR


async def run(conn: psycopg.AsyncConnection, text: str) -> list[pq.PGresult]:
    """Send `text` (statements separated by semicolons, the simple query protocol) and return
    every statement's result. A statement that fails raises its psycopg error (the following
    statements were not run; inside a transaction block, the transaction is aborted); a
    connection that fails raises psycopg.OperationalError."""
    pgconn = conn.pgconn
    pgconn.send_query(text.encode())
    loop = asyncio.get_running_loop()
    while pgconn.flush():  # the rest did not fit in the socket's buffer yet
        await _ready(loop, pgconn.socket, write=True)
    results, error = [], None
    while True:
        while pgconn.is_busy():
            await _ready(loop, pgconn.socket)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status == FATAL and error is None:
            error = errors.error_from_result(result, encoding=conn.info.encoding)
        results.append(result)
    if error is not None:
        raise error
    return results


def text(result: pq.PGresult, row: int = 0, column: int = 0) -> str | None:
    value = result.get_value(row, column)
    return None if value is None else value.decode()


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool = False) -> None:
    future = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, _wake, future)
    try:
        await future
    finally:
        remove(fd)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
