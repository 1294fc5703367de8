"""usage.store: the gateway's usage goes to the database, to the disk buffer while the database
is unreachable, and back exactly once; an unknown COMMIT outcome is resolved, not guessed."""

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import override_settings

from tests.support.pg_proxy import PgProxy
from usage.degraded.buffer import OPEN_SUFFIX, SEALED_SUFFIX
from usage.degraded.deadletter import LOST_MARKER, deltas_from_log
from usage.degraded.drain import replay_log
from usage.ledger.writers import PostgresWriter, postgres_conninfo
from usage.ledger.delta import UsageDelta
from usage.models import BufferEvent, FiveMinuteUsage
from usage.store import UsageStore
from usage.reads.buffer_overview import buffer_overview

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


def deltas(user, facade, count, tokens=10):
    return [UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, facade_id=facade.pk, at=T0, input_tokens=tokens,
                       cost_nanos=tokens * 1000) for _ in range(count)]


def totals():
    rows = list(FiveMinuteUsage.objects.all())
    return sum(r.requests for r in rows), sum(r.input_tokens for r in rows), sum(r.cost_nanos for r in rows)


def proxied_store(proxy, buffer_dir, **kwargs):
    conninfo = postgres_conninfo().replace(f"port={connection.settings_dict['PORT'] or 5432}", f"port={proxy.port}")
    if "port=" not in conninfo:
        conninfo += f" port={proxy.port}"
    return UsageStore(buffer_dir=buffer_dir, writer=PostgresWriter(conninfo, 2, timeout=1.0), **kwargs)


async def wait_until(predicate, seconds=15.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def proxy():
    proxy = PgProxy(connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
    yield proxy
    proxy.close()


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
@override_settings(USAGE_DB_RETRY_SECONDS=0.2, USAGE_DRAIN_INTERVAL_SECONDS=0.2)
def test_an_outage_buffers_without_stalls_and_the_drain_counts_everything_once(proxy, tmp_path, alice, gpt):
    async def scenario():
        store = proxied_store(proxy, tmp_path)
        await store.open()
        try:
            await asyncio.gather(*(store.record(d) for d in deltas(alice, gpt, 20)))
            assert await asyncio.to_thread(totals) == (20, 200, 200_000)
            proxy.set_mode("down")  # returns once the mode is in force
            await store.record(deltas(alice, gpt, 1)[0])  # the first failure trips the breaker
            assert store.status().database_up is False
            started = time.monotonic()
            await asyncio.gather(*(store.record(d) for d in deltas(alice, gpt, 50)))
            assert time.monotonic() - started < 0.5  # straight to disk, no connection timeouts
            assert store.status().buffered == 51
            assert list(tmp_path.glob("*" + OPEN_SUFFIX))
            proxy.set_mode("up")
            await wait_until(lambda: store.status().database_up and store.status().drained == 51)
            await wait_until(lambda: store.status().pending_files == 0)
        finally:
            await store.close()

    asyncio.run(scenario())
    assert totals() == (71, 710, 710_000)
    assert [(e.kind, e.count) for e in BufferEvent.objects.all()] == [("drained", 51)]


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_connection_cut_right_after_commit_is_neither_lost_nor_counted_twice(proxy, tmp_path, alice, gpt, caplog):
    async def scenario():
        store = proxied_store(proxy, tmp_path)
        await store.open()
        try:
            await store.record(deltas(alice, gpt, 1, tokens=1)[0])
            proxy.set_mode("cut_after_commit")
            await store.record(deltas(alice, gpt, 1, tokens=100)[0])
            assert proxy.cuts == 1
            await store.record(deltas(alice, gpt, 1, tokens=10_000)[0])
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="codevector.usage"):
        asyncio.run(scenario())
    assert "connection lost during COMMIT, but it committed" in caplog.text
    assert totals() == (3, 10_101, 10_101_000)
    assert not list(tmp_path.glob("*" + SEALED_SUFFIX))


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
@override_settings(USAGE_DB_RETRY_SECONDS=0.2, USAGE_DRAIN_INTERVAL_SECONDS=0.2)
def test_an_unknown_commit_outcome_buffered_with_its_txid_is_resolved_by_the_drainer(proxy, tmp_path, alice, gpt):
    """The cut comes with an outage: txid_status() cannot be asked now, so the delta is buffered
    with its transaction id and the drainer asks before replaying."""

    async def scenario():
        store = proxied_store(proxy, tmp_path)

        async def unreachable(txid):
            raise OSError("database unreachable")

        store.writer.txid_status = unreachable
        await store.open()
        try:
            proxy.set_mode("cut_after_commit")
            await store.record(deltas(alice, gpt, 1, tokens=100)[0])
            assert store.status().buffered == 1 and store.status().database_up is False
            await wait_until(lambda: store.status().database_up and store.status().pending_files == 0)
        finally:
            await store.close()

    asyncio.run(scenario())
    assert totals() == (1, 100, 100_000)


@pytest.mark.django_db(transaction=True)
@override_settings(USAGE_DB_RETRY_SECONDS=0.1)
def test_with_nowhere_to_record_it_refuses_new_requests_and_logs_in_flight_deltas_for_replay(tmp_path, alice, gpt,
                                                                                              caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")

    async def scenario(fail_open):
        store = UsageStore(buffer_dir=blocked / "buffer", fail_open=fail_open)

        async def down(batch, attempt=None):
            raise OSError("database unreachable")

        store.writer.write = down
        await store.open()
        try:
            assert store.accepting
            await store.record(deltas(alice, gpt, 1, tokens=7)[0])
            status = store.status()
            return status.accepting, status.lost, status.database_up, status.buffer_writable
        finally:
            await store.close()

    with caplog.at_level(logging.CRITICAL, logger="codevector.usage"):
        assert asyncio.run(scenario(fail_open=False)) == (False, 1, False, False)
        assert asyncio.run(scenario(fail_open=True)) == (True, 1, False, False)
    lost = deltas_from_log(caplog.text.splitlines())
    assert [d.input_tokens for d in lost] == [7, 7] and LOST_MARKER in caplog.text
    assert FiveMinuteUsage.objects.count() == 0
    report = replay_log(caplog.text.splitlines())
    assert (report.applied, totals()) == (2, (2, 14, 14_000))


@pytest.mark.django_db
def test_the_overview_counts_pending_and_quarantined_files_and_reported_events(tmp_path, alice, gpt):
    from usage.degraded.buffer import BufferWriter

    writer = BufferWriter(tmp_path)
    writer.append_many(deltas(alice, gpt, 3))
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "bad.buf").write_bytes(b"junk")
    BufferEvent.objects.create(kind="lost", count=2, host="h", pid=1, at=T0)
    BufferEvent.objects.create(kind="refused", count=5, host="h", pid=1, at=T0)
    overview = buffer_overview(tmp_path)
    assert (overview.pending_files, overview.pending_deltas, overview.quarantined_files, overview.lost,
            overview.refused, overview.last_drain_at) == (1, 3, 1, 2, 5, None)
    assert overview.needs_attention and overview.oldest_pending is not None
