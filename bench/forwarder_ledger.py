"""The issue's reference for bench/gateway.py --reference: bench/forwarder.py plus what recording
costs at its simplest — every answer waits for a group-committed UPSERT of its counters (one
`INSERT ... ON CONFLICT DO UPDATE` per batch, autocommit, synchronous commit). No authentication,
no parsing, no rename, no prices: the gap between it and the gateway is the gateway's own steps.

Run: .venv/bin/python -m uvicorn bench.forwarder_ledger:app --port P --loop uvloop --http httptools
with UPSTREAM=http://127.0.0.1:PORT and REFERENCE_DSN=postgres://... (a database it may write a
table `reference_bucket` into) in the environment.
"""

import asyncio
import os

import psycopg

from bench.forwarder import forwarding_app, start_of
from usage.ledger import pgwire

UPSERT = ("INSERT INTO reference_bucket (bucket, requests, bytes) VALUES (1, {requests}, {size}) "
          "ON CONFLICT (bucket) DO UPDATE SET requests = reference_bucket.requests + excluded.requests, "
          "bytes = reference_bucket.bytes + excluded.bytes")
connection: psycopg.AsyncConnection | None = None
pending: list[tuple[int, asyncio.Future]] = []
wakeup: asyncio.Event | None = None


async def writer() -> None:
    """One batch at a time: every answer that arrived meanwhile joins the next."""
    global pending
    while True:
        await wakeup.wait()
        wakeup.clear()
        while pending:
            batch, pending = pending, []
            await pgwire.run(connection, UPSERT.format(requests=len(batch), size=sum(size for size, _ in batch)))
            for _, future in batch:
                future.set_result(None)


async def start() -> None:
    global connection, wakeup
    connection = await psycopg.AsyncConnection.connect(os.environ["REFERENCE_DSN"], autocommit=True)
    await connection.execute("CREATE TABLE IF NOT EXISTS reference_bucket "
                             "(bucket int PRIMARY KEY, requests bigint NOT NULL, bytes bigint NOT NULL)")
    wakeup = asyncio.Event()
    asyncio.get_running_loop().create_task(writer())


async def stop() -> None:
    await connection.close()


async def recorded_answer(response, send) -> None:
    """The whole answer, sent once its counters are committed (before its first byte)."""
    data = await response.read()
    recorded = asyncio.get_running_loop().create_future()
    pending.append((len(data), recorded))
    wakeup.set()
    await recorded
    await send(start_of(response))
    await send({"type": "http.response.body", "body": data})


app = forwarding_app(recorded_answer, start, stop)
