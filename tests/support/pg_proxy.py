"""A loopback TCP proxy in front of PostgreSQL that tests can cut.

Modes:
- "up" forwards; "down" resets every connection and refuses new ones at once.
- "cut_after_commit": forwards the client's COMMIT to the server, then cuts the connection before
  the server's answer comes back (the write committed, but the client cannot know), and returns
  to "up".
- "drop_commit": on the client's COMMIT, cuts the client and resets the server side WITHOUT
  forwarding the COMMIT, so the server aborts the transaction (the write did not land, and the
  client cannot know); returns to "up".
- "hold_commit": on the client's COMMIT, cuts the client but keeps the server connection open
  and the COMMIT unsent, so the transaction stays "in progress" on the server (a network
  partition the server has not noticed yet); returns to "up". `holding` is set once a COMMIT is
  held; `release("commit")` then forwards it (the transaction commits late) and `release("abort")`
  resets the server side without it (the transaction aborts). Either returns once the server
  has ended the transaction.

- "blackhole": a database that stops answering without closing anything (packets dropped): bytes
  are read from both sides and held, new connections accepted but not carried on; set "up"
  again and everything held flows on, in order, as TCP delivers after the network heals.

- "delay_commit": every message carrying a COMMIT is held (kept in `delayed`, `delaying` set)
  with its connection left open, until the mode changes; then it goes on as sent. A ledger whose
  commit takes as long as the test says (tests/test_counted_before_answer.py).

Every cut mode acts on one COMMIT only (`cuts` counts them).
"""

import asyncio
import concurrent.futures
import threading

CUT_MODES = ("cut_after_commit", "drop_commit", "hold_commit")


class PgProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432):
        self.target = (target_host, target_port)
        self.mode = "up"
        self.cuts = 0
        self.holding = threading.Event()  # a COMMIT is held (mode "hold_commit")
        self._held: concurrent.futures.Future | None = None  # its outcome: "commit" or "abort"
        self._held_done: concurrent.futures.Future | None = None  # set once the server ended it
        self.delayed: list[bytes] = []  # messages with a COMMIT held by "delay_commit", in order
        self.delaying = threading.Event()  # one is held now
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()  # cleared while the mode is "blackhole"
        self._flowing.set()
        self._commits_flow = asyncio.Event()  # cleared while the mode is "delay_commit"
        self._commits_flow.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def set_mode(self, mode: str) -> None:
        """Returns once the mode is in force: bytes the client sends after this see it."""
        applied = threading.Event()

        def apply():
            self.mode = mode
            if mode == "blackhole":
                self._flowing.clear()
            else:
                self._flowing.set()
            if mode == "delay_commit":
                self._commits_flow.clear()
            else:
                self._commits_flow.set()
            if mode == "down":
                for writer in list(self._writers):
                    writer.transport.abort()
            applied.set()

        self._loop.call_soon_threadsafe(apply)
        applied.wait(5)

    def release(self, outcome: str, timeout: float = 10.0) -> None:
        """End the held COMMIT's transaction: "commit" forwards the COMMIT, "abort" drops it.
        Returns once the server has answered the COMMIT or seen its connection reset."""
        assert outcome in ("commit", "abort"), outcome
        assert self.holding.wait(timeout), "no COMMIT is held"
        self._loop.call_soon_threadsafe(self._held.set_result, outcome)
        self._held_done.result(timeout)

    def close(self):
        """Reset every connection (a held COMMIT is dropped: no transaction stays open behind),
        let each connection's task end, then stop the loop."""
        async def shutdown():
            self.mode = "down"
            self._flowing.set()
            self._commits_flow.set()
            self._server.close()
            if self._held is not None and not self._held.done():
                self._held.set_result("abort")
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=2)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, client_reader, client_writer):
        if self.mode == "down":
            client_writer.transport.abort()
            return
        await self._flowing.wait()
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        cut = asyncio.Event()  # the client is gone: nothing goes back to it any more
        answered = asyncio.Event()  # the server answered after the cut (a forwarded COMMIT's result)

        async def upstream():
            while data := await client_reader.read(65536):
                mode = self.mode
                if mode in CUT_MODES and b"COMMIT" in data:
                    # Cut the client off first, so no answer can reach it; then the mode's fate.
                    self.mode = "up"
                    self.cuts += 1
                    cut.set()
                    client_writer.transport.abort()
                    if mode == "cut_after_commit":
                        server_writer.write(data)
                        await server_writer.drain()
                        # The server's answer to the COMMIT (which the client never sees): it committed.
                        await asyncio.wait_for(answered.wait(), 10)
                    elif mode == "drop_commit":
                        server_writer.transport.abort()  # the server reads a reset: it aborts
                    else:
                        await self._hold(data, server_writer, answered)
                    return
                if mode == "delay_commit" and b"COMMIT" in data:
                    self.delayed.append(data)
                    self.delaying.set()
                    await self._commits_flow.wait()
                    self.delaying.clear()
                await self._flowing.wait()
                server_writer.write(data)
                await server_writer.drain()
            await self._flowing.wait()  # the client closed: the server hears of it once the network flows
            server_writer.transport.abort()

        async def downstream():
            while data := await server_reader.read(65536):
                if cut.is_set():  # an answer the client must never see (a forwarded COMMIT's)
                    answered.set()
                    return
                await self._flowing.wait()
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

    async def _hold(self, commit: bytes, server_writer, answered: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._held, self._held_done = loop.create_future(), concurrent.futures.Future()
        self.holding.set()
        try:
            outcome = await self._held
            if outcome == "commit":
                server_writer.write(commit)
                await server_writer.drain()
                await asyncio.wait_for(answered.wait(), 10)
            else:
                server_writer.transport.abort()
                await asyncio.sleep(0.05)
        finally:
            self.holding.clear()
            self._held_done.set_result(None)
