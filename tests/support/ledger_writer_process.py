"""A separate writer process for the ledger concurrency test and bench/ledger.py.

Usage: python tests/support/ledger_writer_process.py SEED COUNT USER_IDS FACADE_IDS [--sync] [--start-at EPOCH] [--spread SECONDS]
DATABASE_URL names the database. Deltas come from `deltas_for(seed, ...)`, so the parent can
recompute exactly what each process wrote.
"""

import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")

ANCHOR = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def deltas_for(seed: int, count: int, user_ids: list[int], facade_ids: list[int], spread: int = 900):
    """Random deltas over a few keys plus one shared hot key (the first user and facade, one bucket)."""
    from usage.ledger.delta import UsageDelta

    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.5:
            user, facade, at = user_ids[0], facade_ids[0], ANCHOR
        else:
            user, facade = rng.choice(user_ids), rng.choice(facade_ids)
            at = ANCHOR + timedelta(seconds=rng.randrange(0, spread))
        inp = rng.randrange(0, 100_000)
        yield UsageDelta(
            id=uuid.UUID(int=rng.getrandbits(128)).hex, user_id=user, facade_id=facade, at=at,
            error_requests=rng.randrange(0, 2), estimated_requests=rng.randrange(0, 2),
            input_tokens=inp, cached_input_tokens=inp // 2, cache_write_tokens=inp // 5,
            output_tokens=rng.randrange(0, 10_000), cost_nanos=rng.randrange(0, 10**10),
        )


async def write_async(deltas, in_flight: int = 32):
    from usage.ledger.committer import GroupCommitter
    from usage.ledger.writers import make_writer

    writer = make_writer()
    await writer.open()
    committer = GroupCommitter(writer)
    queue = list(deltas)
    try:
        for start in range(0, len(queue), in_flight):
            await asyncio.gather(*(committer.record(d) for d in queue[start : start + in_flight]))
    finally:
        await committer.close()
        await writer.close()


def main():
    import django

    django.setup()
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    users = [int(x) for x in sys.argv[3].split(",")]
    facades = [int(x) for x in sys.argv[4].split(",")]
    spread = int(sys.argv[sys.argv.index("--spread") + 1]) if "--spread" in sys.argv else 900
    deltas = list(deltas_for(seed, count, users, facades, spread))
    if "--start-at" in sys.argv:  # a shared start line, so the bench times only the writing
        time.sleep(max(0.0, float(sys.argv[sys.argv.index("--start-at") + 1]) - time.time()))
    if "--sync" in sys.argv:
        from usage.ledger.plan import record

        for d in deltas:
            record(d)
    else:
        asyncio.run(write_async(deltas))
    print(f"finished {time.time():.6f}")


if __name__ == "__main__":
    main()
