"""The gateway's ledger writer on PostgreSQL (usage.ledger.writers.PostgresWriter, usage.ledger.pgwire): one round
trip per batch on an armed connection, the armed transaction's lock given back when idle, prepared
UPSERTs (and plain text when a pooler loses them), statement errors in psycopg's classes."""

import asyncio
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from usage.ledger import pgwire
from usage import sql
from usage.ledger.writers import PostgresWriter, WriteAttempt, postgres_conninfo
from usage.ledger.delta import UsageDelta
from usage.models import FiveMinuteUsage
from usage.rollups import ensure_state

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


def delta(owner, facade, tokens, user_id=None):
    """`owner`: (user id, key id); `user_id` instead of the owner's: a user the database refuses."""
    return UsageDelta(id=uuid.uuid4().hex, user_id=user_id or owner[0], key_id=owner[1], facade_id=facade.pk, at=T0,
                      input_tokens=tokens, cost_nanos=tokens * 1000)


@pytest.fixture
def alice_key(alice):
    from gateway.models import ApiKey

    ApiKey.objects.create_key(user=alice, name="writer test")
    return alice.pk, alice.api_keys.get().pk


def totals():
    rows = list(FiveMinuteUsage.objects.all())
    return sum(r.requests for r in rows), sum(r.input_tokens for r in rows), sum(r.cost_nanos for r in rows)


async def with_writer(scenario):
    writer = PostgresWriter(postgres_conninfo(), 2, timeout=2.0)
    await writer.open()
    try:
        return await scenario(writer)
    finally:
        await writer.close()


def watermark_lock_is_free() -> bool:
    """What a rollup asks first: the watermark's lock, exclusively (here without waiting)."""
    with psycopg.connect(postgres_conninfo(), autocommit=True) as conn:
        with conn.transaction():
            return conn.execute(f"SELECT pg_try_advisory_xact_lock({sql.WATERMARK_LOCK_KEY})").fetchone()[0]


def test_a_write_leaves_the_next_one_armed_and_it_commits_in_one_round_trip(alice_key, gpt):
    ensure_state()

    async def scenario(writer):
        first, second = WriteAttempt(), WriteAttempt()
        await writer.write([delta(alice_key, gpt, 10), delta(alice_key, gpt, 20)], first)
        assert len(writer._armed) == 1  # the next transaction is open, its txid known
        armed_txid = writer._armed[0].locked[0][0]
        assert armed_txid > first.txid
        sent = []
        run = pgwire.run

        async def counting(conn, text):
            sent.append(text)
            return await run(conn, text)

        pgwire.run = counting
        try:
            await writer.write([delta(alice_key, gpt, 30)], second)
        finally:
            pgwire.run = run
        assert second.txid == armed_txid
        assert len(sent) == 1  # UPSERT; COMMIT; BEGIN; the lock, shared; the watermark and txid
        assert sent[0].startswith("EXECUTE codevector_add_5min_1(")
        assert sent[0].endswith("; COMMIT; BEGIN; EXECUTE codevector_share_watermark; EXECUTE codevector_lock_watermark")
        return watermark_lock_is_free()

    lock_free_while_armed = asyncio.run(with_writer(scenario))
    assert lock_free_while_armed is False  # the armed transaction holds the watermark's share lock
    assert totals() == (3, 60, 60_000)
    assert watermark_lock_is_free()  # closing the writer rolled it back


def test_armed_writers_lock_nothing_in_the_watermarks_row_and_a_rollup_still_waits_for_them(alice_key, gpt):
    """Three writers armed at once (three gateway workers) hold the watermark's advisory lock
    shared: the row itself carries no lock (a row share-locked by several transactions needs a new
    MultiXact per lock), and a rollup's exclusive lock waits until they give it back."""
    ensure_state()

    async def scenario():
        writers = [PostgresWriter(postgres_conninfo(), 1, timeout=2.0) for _ in range(3)]
        for writer in writers:
            await writer.open()
        try:
            for n, writer in enumerate(writers):
                await writer.write([delta(alice_key, gpt, n + 1)])
            assert all(len(writer._armed) == 1 for writer in writers)
            with psycopg.connect(postgres_conninfo(), autocommit=True) as conn:
                xmax = conn.execute(f"SELECT xmax::text FROM {sql.STATE_TABLE} WHERE id = 1").fetchone()[0]
            return xmax, watermark_lock_is_free()
        finally:
            for writer in writers:
                await writer.close()

    xmax, free_while_armed = asyncio.run(scenario())
    assert xmax == "0"  # with FOR SHARE: a MultiXact of the three transactions
    assert free_while_armed is False
    assert watermark_lock_is_free()
    assert totals() == (3, 6, 6_000)


def test_a_rollup_holds_the_watermarks_lock_exclusively_until_it_ends(alice_key, gpt):
    from django.db import connection, transaction

    from usage.rollups import _lock_state

    ensure_state()
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_state(cursor)
        assert watermark_lock_is_free() is False
    assert watermark_lock_is_free()


def test_an_idle_armed_transaction_gives_the_watermark_back_for_rollups(alice_key, gpt):
    ensure_state()

    async def scenario(writer):
        await writer.write([delta(alice_key, gpt, 5)])
        held = watermark_lock_is_free()
        started = time.monotonic()
        while not watermark_lock_is_free():
            assert time.monotonic() - started < PostgresWriter.ARMED_SECONDS + 2, "the armed lock was never released"
            await asyncio.sleep(0.02)
        await writer.write([delta(alice_key, gpt, 7)])  # a fresh transaction: two round trips, same result
        return held

    assert asyncio.run(with_writer(scenario)) is False
    assert totals() == (2, 12, 12_000)


def test_a_refused_delta_raises_psycopgs_error_and_the_connection_serves_again(alice_key, gpt):
    ensure_state()

    async def scenario(writer):
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # a user deleted meanwhile, say
            await writer.write([delta(alice_key, gpt, 1, user_id=alice_key[0] + 10_000)])
        assert not writer._armed
        await writer.write([delta(alice_key, gpt, 9)])

    asyncio.run(with_writer(scenario))
    assert totals() == (1, 9, 9_000)


def test_lost_prepared_statements_fall_back_to_plain_text_without_losing_the_batch(alice_key, gpt):
    ensure_state()

    async def scenario(writer):
        await writer.write([delta(alice_key, gpt, 1)])
        # What a transaction-pooling proxy does: the next statement lands in a session that never
        # prepared them.
        await pgwire.run(writer._armed[0].conn, "DEALLOCATE ALL")
        await writer.write([delta(alice_key, gpt, 2), delta(alice_key, gpt, 4)])
        assert writer.prepared == {}
        await writer.write([delta(alice_key, gpt, 8)])

    asyncio.run(with_writer(scenario))
    assert totals() == (4, 15, 15_000)


@pytest.mark.parametrize("lost", [PostgresWriter.SHARE_NAME, PostgresWriter.LOCK_NAME])
def test_a_lost_lock_statement_after_commit_leaves_the_outcome_to_txid_status_never_to_a_rewrite(alice_key, gpt, lost):
    """More rows than are prepared go as plain text; a prepared statement of the lock after COMMIT
    then fails with the batch already committed: the writer says the outcome is unknown (the store
    asks txid_status()), it does not write the batch a second time."""
    from datetime import timedelta

    from usage.ledger.writers import PREPARED_ROWS, CommitOutcomeUnknown

    ensure_state()
    spread = [replace_at(delta(alice_key, gpt, 1), T0 + timedelta(minutes=5 * n)) for n in range(PREPARED_ROWS + 1)]

    async def scenario(writer):
        await writer.write([delta(alice_key, gpt, 100)])
        await pgwire.run(writer._armed[0].conn, f"DEALLOCATE {lost}")
        with pytest.raises(CommitOutcomeUnknown) as raised:
            await writer.write(spread)
        assert await writer.txid_status(raised.value.txid) == "committed"
        assert writer.prepared == {}
        await writer.write([delta(alice_key, gpt, 1000)])

    asyncio.run(with_writer(scenario))
    assert totals() == (PREPARED_ROWS + 3, 1100 + PREPARED_ROWS + 1, (1100 + PREPARED_ROWS + 1) * 1000)


def replace_at(one: UsageDelta, at: datetime) -> UsageDelta:
    from dataclasses import replace

    return replace(one, at=at)


def test_pgwire_returns_every_result_and_raises_the_failing_statements_class(db):
    async def scenario():
        conn = await psycopg.AsyncConnection.connect(postgres_conninfo(), autocommit=True)
        try:
            results = await pgwire.run(conn, "SELECT 1; SELECT 'two', NULL")
            assert [pgwire.text(r) for r in results] == ["1", "two"]
            assert pgwire.text(results[1], 0, 1) is None
            with pytest.raises(psycopg.errors.DivisionByZero):
                await pgwire.run(conn, "BEGIN; SELECT 1/0; SELECT 3")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            await pgwire.run(conn, "ROLLBACK")
            assert pgwire.text((await pgwire.run(conn, "SELECT 3"))[0]) == "3"
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_literals_take_integers_and_aware_times_only():
    assert sql.literal(42) == "42"
    assert sql.literal(True) == "1"
    assert sql.literal(T0) == "'2026-07-01T09:00:00+00:00'::timestamptz"
    for refused in ("1; DROP TABLE x", 1.5, None, datetime(2026, 1, 1)):
        with pytest.raises(TypeError):
            sql.literal(refused)
    assert sql.render([("SELECT %s, %s", [1, 2]), ("SELECT %s", [3])]) == "SELECT 1, 2; SELECT 3"
    assert sql.render([("INSERT %s", [7])], {"INSERT %s": "p1"}) == "EXECUTE p1(7)"
    assert sql.prepare("p2", "VALUES (%s, %s), (%s)") == "PREPARE p2 AS VALUES ($1, $2), ($3)"


@pytest.mark.parametrize(("setting", "shown"), [(None, "on"), (True, "on"), (False, "off")])
def test_the_gateways_writer_commits_synchronously_unless_the_setting_says_otherwise(db, settings, setting, shown):
    """Issue #31, item 4: the durability default asserted on the writer's own connection, as the
    gateway's store makes it (catches a writer, or a default, that turned synchronous_commit off)."""
    from usage.store import UsageStore

    if setting is not None:
        settings.USAGE_SYNCHRONOUS_COMMIT = setting

    async def scenario():
        store = UsageStore()
        await store.open()
        try:
            async with store.writer.pool.connection() as conn:
                return (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == shown
