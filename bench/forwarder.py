"""The ceiling for bench/gateway.py: a bare ASGI callable forwarding POSTs with aiohttp, with no
authentication, no parsing beyond what forwarding needs, and no database.

Run: .venv/bin/python -m uvicorn bench.forwarder:app --port P --loop uvloop --http httptools
with UPSTREAM=http://127.0.0.1:PORT in the environment.
"""

import os

import aiohttp

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8001")


def forwarding_app(answer, start=None, stop=None):
    """An ASGI app that forwards each POST's body to UPSTREAM with one shared aiohttp session and
    leaves the answer to `answer(response, send)`; `start()` and `stop()` run beside the session's
    opening and closing (bench/forwarder_ledger.py opens its database connection there)."""
    session: aiohttp.ClientSession | None = None

    async def app(scope, receive, send):
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
                    if start:
                        await start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await session.close()
                    if stop:
                        await stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with session.post(UPSTREAM + scope["path"], data=body,
                                headers={"content-type": "application/json"}) as response:
            await answer(response, send)

    return app


def start_of(response) -> dict:
    return {"type": "http.response.start", "status": response.status,
            "headers": [(b"content-type", response.headers.get("content-type", "").encode())]}


async def pass_through(response, send) -> None:
    """The upstream's answer, chunk by chunk as it comes."""
    await send(start_of(response))
    async for chunk in response.content.iter_any():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


app = forwarding_app(pass_through)
