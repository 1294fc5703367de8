import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from usage import sql
from usage.ledger.committer import GroupCommitter
from usage.ledger.delta import UsageDelta, five_minute_start
from usage.ledger.writers import make_writer
from usage.ledger.plan import record, record_many
from usage.models import FiveMinuteUsage
from usage.sql import COUNTERS

T0 = datetime(2026, 3, 1, 4, 55, tzinfo=UTC)


def delta(user, facade, at, **counters):
    return UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk, at=at, **counters)


def table():
    """The whole 5-minute table as {(start, user, facade): {counter: value}}."""
    return {
        (row.bucket_start, row.user_id, row.facade_id): {c: getattr(row, c) for c in COUNTERS}
        for row in FiveMinuteUsage.objects.all()
    }


def test_it_floors_times_to_five_minute_buckets_in_utc():
    assert five_minute_start(datetime(2026, 3, 1, 4, 59, 59, 999999, tzinfo=UTC)) == datetime(2026, 3, 1, 4, 55, tzinfo=UTC)
    assert five_minute_start(datetime(2026, 3, 1, 5, 0, tzinfo=UTC)) == datetime(2026, 3, 1, 5, 0, tzinfo=UTC)


def test_it_refuses_naive_times_and_float_counters():
    with pytest.raises(ValueError):
        UsageDelta(id="x", user_id=1, facade_id=1, at=datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        UsageDelta(id="x", user_id=1, facade_id=1, at=T0, cost_nanos=1.5)


def test_it_puts_the_last_microsecond_and_the_next_bucket_apart(alice, gpt):
    record(delta(alice, gpt, datetime(2026, 3, 1, 4, 59, 59, 999999, tzinfo=UTC), input_tokens=7))
    record(delta(alice, gpt, datetime(2026, 3, 1, 5, 0, tzinfo=UTC), input_tokens=11))
    rows = table()
    assert {k[0]: v["input_tokens"] for k, v in rows.items()} == {
        datetime(2026, 3, 1, 4, 55, tzinfo=UTC): 7,
        datetime(2026, 3, 1, 5, 0, tzinfo=UTC): 11,
    }
    assert {k[0]: v["requests"] for k, v in rows.items()} == {
        datetime(2026, 3, 1, 4, 55, tzinfo=UTC): 1,
        datetime(2026, 3, 1, 5, 0, tzinfo=UTC): 1,
    }


def test_it_adds_many_deltas_exactly_per_bucket_user_and_facade(alice, bob, gpt, claude):
    import random

    rng = random.Random(7)
    expected: dict = {}
    deltas = []
    for _ in range(400):
        user, facade = rng.choice([alice, bob]), rng.choice([gpt, claude])
        at = T0 + timedelta(seconds=rng.randrange(0, 3600), microseconds=rng.randrange(0, 10**6))
        inp = rng.randrange(0, 5000)
        counters = dict(
            requests=1,
            error_requests=rng.randrange(0, 2),
            estimated_requests=rng.randrange(0, 2),
            input_tokens=inp,
            cached_input_tokens=inp // 3,
            cache_write_tokens=inp // 7,
            output_tokens=rng.randrange(0, 2000),
            cost_nanos=rng.randrange(0, 10**9),
        )
        deltas.append(delta(user, facade, at, **counters))
        key = (five_minute_start(at), user.pk, facade.pk)
        row = expected.setdefault(key, dict.fromkeys(COUNTERS, 0))
        for name, value in counters.items():
            row[name] += value
    # Mixed batch sizes: single records and multi-row statements larger than one chunk.
    for d in deltas[:50]:
        record(d)
    record_many(deltas[50:])
    assert table() == expected



class Batches:
    """A batch writer made of one coroutine function: the committer is given an object that writes."""

    def __init__(self, write):
        self.write = write

@pytest.mark.django_db(transaction=True)
def test_group_commit_releases_each_caller_after_its_delta_is_committed(alice, gpt):
    async def scenario():
        writer = make_writer()
        await writer.open()
        committer = GroupCommitter(writer)
        try:
            await asyncio.gather(*(committer.record(delta(alice, gpt, T0, output_tokens=n)) for n in range(1, 201)))
        finally:
            await committer.close()
            await writer.close()

    asyncio.run(scenario())
    assert table() == {
        (T0, alice.pk, gpt.pk): dict.fromkeys(COUNTERS, 0) | {"requests": 200, "output_tokens": 200 * 201 // 2}
    }


def test_the_committer_polls_only_while_a_batch_is_in_flight_and_never_past_its_bound():
    """USAGE_COMMIT_SPIN_SECONDS: the loop turns without sleeping while a batch is written, and stops
    at once when the batch is done, or when the bound is reached with the batch still out."""

    async def spin_turns(write_seconds: float, spin_seconds: float) -> tuple[int, bool]:
        """Turns of the loop during a write, counted by a callback that re-arms itself each turn
        only while the committer spins (a sleeping loop takes one turn per timer)."""
        loop = asyncio.get_running_loop()
        turns = 0

        async def write(deltas):
            await asyncio.sleep(write_seconds)

        committer = GroupCommitter(Batches(write), spin_seconds=spin_seconds)

        def watch():
            nonlocal turns
            if committer._spinning:
                turns += 1
            if not done.done():
                loop.call_soon(watch)

        done = loop.create_future()
        recorded = loop.create_task(committer.record(None))
        loop.call_soon(watch)
        await recorded
        done.set_result(None)
        spinning_after = committer._spinning
        await committer.close()
        return turns, spinning_after

    turns_off, _ = asyncio.run(spin_turns(0.05, 0.0))
    turns_on, left_on = asyncio.run(spin_turns(0.05, 0.2))
    # A sleeping loop turns once or twice in 50 ms; a spinning one hundreds of times when the CPU
    # is free, still dozens when other processes take it (each turn yields it to them).
    assert turns_off == 0 and turns_on > 10 and left_on is False

    async def bounded() -> tuple[bool, bool]:
        async def write(deltas):
            await asyncio.sleep(0.15)

        committer = GroupCommitter(Batches(write), spin_seconds=0.02)
        recorded = asyncio.get_running_loop().create_task(committer.record(None))
        await asyncio.sleep(0.005)
        early = committer._spinning
        await asyncio.sleep(0.05)  # past the bound, the batch still out
        late = committer._spinning
        await recorded
        await committer.close()
        return early, late

    assert asyncio.run(bounded()) == (True, False)


def test_the_committer_polls_only_while_every_request_in_progress_waits_for_a_commit():
    """With the gateway's count of requests in progress: one request, waiting for its batch, makes
    the loop poll; another request coming in stops the polling at once (its I/O wakes the loop);
    a batch that goes out while other requests are in progress is not polled for at all."""

    async def scenario() -> tuple[bool, bool, bool, bool]:
        in_progress = 1

        async def write(deltas):
            await asyncio.sleep(0.05)

        committer = GroupCommitter(Batches(write), spin_seconds=0.2, in_progress=lambda: in_progress)
        first = asyncio.get_running_loop().create_task(committer.record(None))
        await asyncio.sleep(0.01)
        alone = committer._spinning
        in_progress = 2  # a second request arrives, still on its way to the upstream
        await asyncio.sleep(0.01)
        joined = committer._spinning
        await first
        in_progress = 3  # the next batch goes out with two other requests in progress
        second = asyncio.get_running_loop().create_task(committer.record(None))
        await asyncio.sleep(0.01)
        busy = committer._spinning
        in_progress = 1
        await second
        await committer.close()
        return alone, joined, busy, committer._waiting == 0

    assert asyncio.run(scenario()) == (True, False, False, True)


def test_a_lane_writing_batch_after_batch_polls_through_all_of_them():
    """The spin's bound counts from each batch's start, not from the first: under steady load one
    lane writes batch after batch, and the loop keeps polling past the first batch's bound."""

    async def scenario() -> tuple[list[bool], bool]:
        async def write(deltas):
            await asyncio.sleep(0.03)

        committer = GroupCommitter(Batches(write), spin_seconds=0.05)

        async def feed():  # a delta every 10 ms for 150 ms: a batch is always waiting
            callers = []
            for _ in range(15):
                callers.append(asyncio.create_task(committer.record(None)))
                await asyncio.sleep(0.01)
            await asyncio.gather(*callers)

        feeding = asyncio.create_task(feed())
        samples = []
        for pause in (0.08, 0.03):  # at ~80 and ~110 ms: past the first batch's bound of 50 ms
            await asyncio.sleep(pause)
            samples.append(committer._spinning)
        await feeding
        await asyncio.sleep(0.06)
        spinning_after = committer._spinning
        await committer.close()
        return samples, spinning_after

    assert asyncio.run(scenario()) == ([True, True], False)


def test_the_next_batch_goes_out_before_the_callers_of_the_last_one_run_on():
    """A batch's answer and the next batch's send share one step of the event loop: the deltas that
    arrived meanwhile do not wait behind the released callers (each answering its client)."""

    async def scenario() -> list:
        events, gates = [], []

        async def write(deltas):
            events.append(("write", list(deltas)))
            gate = asyncio.get_running_loop().create_future()
            gates.append(gate)
            await gate

        committer = GroupCommitter(Batches(write))

        async def caller(name):
            await committer.record(name)
            events.append(("answered", name))

        first = asyncio.create_task(caller("a"))
        while not gates:
            await asyncio.sleep(0)
        second = [asyncio.create_task(caller(name)) for name in ("b", "c")]
        await asyncio.sleep(0.01)  # b and c wait: one batch in flight
        gates[0].set_result(None)
        await first
        gates[1].set_result(None)
        await asyncio.gather(*second)
        await committer.close()
        return events

    assert asyncio.run(scenario()) == [("write", ["a"]), ("write", ["b", "c"]), ("answered", "a"),
                                       ("answered", "b"), ("answered", "c")]


def test_the_upsert_statement_names_every_counter():
    statement = sql.add_counters("usage_bucket_5min", 2)
    assert statement.count("(" + ", ".join(["%s"] * 16) + ")") == 2  # 4 key columns, 12 counters
    for name in COUNTERS:
        assert f"{name} = usage_bucket_5min.{name} + EXCLUDED.{name}" in statement
    assert connection.vendor in ("postgresql", "sqlite")


def set_watermark(at):
    from usage.models import RollupState

    RollupState.objects.update_or_create(pk=1, defaults={"watermark": at, "time_zone": "UTC"})


def level(model):
    return {(r.bucket_start, r.user_id, r.facade_id): (r.requests, r.input_tokens) for r in model.objects.all()}


def test_late_deltas_are_added_to_every_level_already_rolled(alice, gpt):
    from usage.models import DailyUsage, HourlyUsage, MonthlyUsage

    set_watermark(datetime(2026, 4, 1, 0, tzinfo=UTC))  # March is rolled, as is every hour before April
    record(delta(alice, gpt, datetime(2026, 3, 31, 23, 59, tzinfo=UTC), input_tokens=5))  # late: all levels
    record(delta(alice, gpt, datetime(2026, 4, 1, 0, 0, tzinfo=UTC), input_tokens=7))  # not late
    key_hour = (datetime(2026, 3, 31, 23, tzinfo=UTC), alice.pk, gpt.pk)
    assert level(HourlyUsage) == {key_hour: (1, 5)}
    assert level(DailyUsage) == {(datetime(2026, 3, 31, tzinfo=UTC), alice.pk, gpt.pk): (1, 5)}
    assert level(MonthlyUsage) == {(datetime(2026, 3, 1, tzinfo=UTC), alice.pk, gpt.pk): (1, 5)}
    record(delta(alice, gpt, datetime(2026, 3, 31, 23, 1, tzinfo=UTC), input_tokens=1))
    assert level(HourlyUsage) == {key_hour: (2, 6)}


def test_a_late_delta_reaches_only_the_levels_whose_period_has_ended(alice, gpt):
    from usage.models import DailyUsage, HourlyUsage, MonthlyUsage

    set_watermark(datetime(2026, 4, 10, 15, tzinfo=UTC))  # mid-day, mid-month
    record(delta(alice, gpt, datetime(2026, 4, 10, 14, 30, tzinfo=UTC), input_tokens=3))  # hour rolled only
    record(delta(alice, gpt, datetime(2026, 4, 9, 8, 0, tzinfo=UTC), input_tokens=4))  # hour and day rolled
    assert level(HourlyUsage) == {(datetime(2026, 4, 10, 14, tzinfo=UTC), alice.pk, gpt.pk): (1, 3),
                                  (datetime(2026, 4, 9, 8, tzinfo=UTC), alice.pk, gpt.pk): (1, 4)}
    assert level(DailyUsage) == {(datetime(2026, 4, 9, tzinfo=UTC), alice.pk, gpt.pk): (1, 4)}
    assert level(MonthlyUsage) == {}
