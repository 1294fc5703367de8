"""RFC 8305 (Happy Eyeballs) for a name with several addresses: the order to try them in, and the
race that connects to the first one that answers, so that an address that does not route (an IPv6
path that is down, a dead host among several) costs one attempt delay, not a connect timeout."""

import asyncio
import socket

# RFC 8305's "Connection Attempt Delay": the next address is tried if the last gave no answer by then.
HAPPY_EYEBALLS_DELAY = 0.25


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
