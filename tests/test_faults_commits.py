"""A COMMIT cut off on its way, for every outcome the server can reach, through the PostgreSQL proxy
(tests/support/pg_proxy.py): the client never learns the outcome, and each delta still lands in the
ledger exactly once.

- committed (the COMMIT reached the server, its answer did not come back): tests/test_store.py;
- aborted (the COMMIT never reached the server, which saw its connection reset): the store asks
  txid_status(), hears "aborted", buffers the delta without a txid, and the drain applies it;
- still in progress (the COMMIT is held on the way, the server's session stays open, longer than the
  store waits): the store buffers the delta WITH its txid and never replays it beside the open
  transaction; the drainer leaves it (OutcomeNotYetKnown) until the outcome is known, then applies
  it only if the transaction aborted.
"""

import asyncio
import logging
import time

import pytest
from django.db import connections
from django.test import override_settings

import usage.degraded.breaker
from tests.test_store import deltas, proxied_store, proxy, totals, wait_until  # noqa: F401 (proxy)
from usage.degraded.drain import OutcomeNotYetKnown, landed_writes
from usage.models import AppliedDelta

pytestmark = [pytest.mark.postgres_only, pytest.mark.xdist_group("faults"), pytest.mark.django_db(transaction=True)]

HELD_WAIT_SECONDS = 0.3  # the store's in-progress wait, made short


def in_thread(function, *args):
    """Run Django ORM work off the event loop, on a connection closed afterwards."""
    def run():
        try:
            return function(*args)
        finally:
            connections.close_all()
    return asyncio.to_thread(run)


def spy_on_buffer(store) -> list[tuple[list[str], int | None]]:
    """What the store hands its buffer: (delta ids, txid) per append."""
    appended = []
    append_many = store.buffer.append_many

    def spy(batch, txid=None):
        appended.append(([d.id for d in batch], txid))
        return append_many(batch, txid)

    store.buffer.append_many = spy
    return appended


def applied_ids():
    return set(AppliedDelta.objects.values_list("delta_id", flat=True))


@override_settings(USAGE_DB_RETRY_SECONDS=0.2, USAGE_DRAIN_INTERVAL_SECONDS=0.2)
def test_a_commit_that_never_reached_the_server_is_resolved_as_aborted_buffered_and_drained_once(
        proxy, tmp_path, alice, gpt, caplog):
    before, cut, after = (deltas(alice, gpt, 1, tokens=tokens)[0] for tokens in (1, 100, 10_000))

    async def scenario():
        store = proxied_store(proxy, tmp_path)
        appended = spy_on_buffer(store)
        await store.open()
        try:
            await store.record(before)
            proxy.set_mode("drop_commit")
            await store.record(cut)
            assert proxy.cuts == 1
            # Resolved at once: aborted, so buffered without a txid (nothing left to ask), and the
            # database is not taken for down.
            assert appended == [([cut.id], None)]
            assert store.status().database_up
            await wait_until(lambda: store.status().drained == 1 and store.status().pending_files == 0)
            await store.record(after)
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="codevector.usage"):
        asyncio.run(scenario())
    assert "connection lost during COMMIT and it did not commit (aborted)" in caplog.text
    assert totals() == (3, 10_101, 10_101_000)
    assert applied_ids() == {cut.id}  # replayed through the drain, exactly once
    assert [p for p in tmp_path.iterdir() if p.is_file()] == []  # no buffer file left


@pytest.mark.parametrize("outcome", ["commit", "abort"])
@override_settings(USAGE_DB_RETRY_SECONDS=0.2, USAGE_DRAIN_INTERVAL_SECONDS=0.2)
def test_a_commit_still_in_progress_is_buffered_with_its_txid_and_drained_only_once_its_outcome_is_known(
        proxy, tmp_path, alice, gpt, caplog, monkeypatch, outcome):
    monkeypatch.setattr(usage.degraded.breaker, "IN_PROGRESS_WAIT_SECONDS", HELD_WAIT_SECONDS)
    held = deltas(alice, gpt, 1, tokens=100)[0]

    async def scenario():
        store = proxied_store(proxy, tmp_path)
        appended = spy_on_buffer(store)
        await store.open()
        try:
            proxy.set_mode("hold_commit")
            started = time.monotonic()
            await store.record(held)
            waited = time.monotonic() - started
            assert proxy.holding.is_set() and proxy.cuts == 1
            # The store asked, heard "in progress" for its whole wait, and buffered the delta with
            # the transaction's id (never replayed beside the open transaction).
            assert HELD_WAIT_SECONDS <= waited < usage.degraded.breaker.IN_PROGRESS_WAIT_SECONDS + 1.5
            [(ids, txid)] = appended
            assert ids == [held.id] and isinstance(txid, int)
            assert store.status().database_up

            # The drainer's question, asked directly: not yet known.
            with pytest.raises(OutcomeNotYetKnown):
                await in_thread(landed_writes, {held.id: txid})
            # The store's own drain runs every 0.2 s meanwhile: twice it finds the transaction still
            # open, and the file stays, nothing applied.
            await wait_until(lambda: caplog.text.count("still in progress; retrying later") >= 2)
            assert store.status().pending_files == 1 and store.status().drained == 0
            assert await in_thread(totals) == (0, 0, 0)
            assert await in_thread(applied_ids) == set()

            await asyncio.to_thread(proxy.release, outcome)  # the COMMIT goes on late, or is dropped
            await wait_until(lambda: store.status().pending_files == 0)
            landed = await in_thread(landed_writes, {held.id: txid})
            assert landed == (frozenset({held.id}) if outcome == "commit" else frozenset())
            return store.status().drained
        finally:
            await store.close()

    with caplog.at_level(logging.INFO):
        drained = asyncio.run(scenario())
    assert "did not commit (in progress)" in caplog.text
    assert "still in progress; retrying later" in caplog.text
    # Committed late: the live write counts and the replay only records the id; aborted: the
    # replay applies it. Exactly once either way.
    assert drained == (0 if outcome == "commit" else 1)
    assert totals() == (1, 100, 100_000)
    assert applied_ids() == {held.id}
