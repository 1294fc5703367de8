"""A loopback TCP proxy in front of PostgreSQL that tests can cut.

Modes: "up" forwards; "down" resets every connection and refuses new ones at once;
"cut_after_commit" forwards the client's COMMIT to the server, then cuts the connection before
the server's answer comes back (the write's outcome is unknown to the client), and returns to "up".
"""

import asyncio
import threading


class PgProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432):
        self.target = (target_host, target_port)
        self.mode = "up"
        self.cuts = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def set_mode(self, mode: str) -> None:
        def apply():
            self.mode = mode
            if mode == "down":
                for writer in list(self._writers):
                    writer.transport.abort()
        self._loop.call_soon_threadsafe(apply)

    def close(self):
        self.set_mode("down")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, client_reader, client_writer):
        if self.mode == "down":
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        cut = asyncio.Event()

        async def upstream():
            while data := await client_reader.read(65536):
                if self.mode == "cut_after_commit" and b"COMMIT" in data:
                    # Cut the client off first, so no answer can reach it, then deliver COMMIT.
                    self.mode = "up"
                    self.cuts += 1
                    cut.set()
                    client_writer.transport.abort()
                    server_writer.write(data)
                    await server_writer.drain()
                    await asyncio.sleep(0.2)  # let the server commit before its socket goes
                    return
                server_writer.write(data)
                await server_writer.drain()

        async def downstream():
            while data := await server_reader.read(65536):
                if cut.is_set():
                    return
                client_writer.write(data)
                await client_writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()
