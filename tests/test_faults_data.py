"""Faults in the data and on the disk, created for real: a delta the database refuses (its user was
deleted while their key was still cached) never fails the rest of its batch, and a full disk (a
small tmpfs) never holds a torn or silently lost delta."""

import asyncio
import json
import logging
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection

from tests.support.ci import cannot_run
from tests.support.pg_proxy import PgProxy
from tests.test_gateway_app import chat, gw, ledger  # noqa: F401 (gw)
from usage.degraded.buffer import SEALED_SUFFIX, BufferWriter, decode
from usage.degraded.deadletter import REJECTED_MARKER
from usage.degraded.drain import drain
from usage.ledger.delta import UsageDelta
from usage.models import BufferEvent, FiveMinuteUsage
from usage.store import UsageStore

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


def delta(user_id, facade, tokens, key_id=None):
    return UsageDelta(id=uuid.uuid4().hex, user_id=user_id, key_id=key_id, facade_id=facade.pk, at=T0,
                      input_tokens=tokens, cost_nanos=tokens * 1000)


def totals():
    rows = list(FiveMinuteUsage.objects.all())
    return sum(r.requests for r in rows), sum(r.input_tokens for r in rows)


def rejected_lines(directory: Path) -> list[dict]:
    files = sorted((directory / "quarantine").glob("rejected-*.log"))
    return [json.loads(line.split(REJECTED_MARKER, 1)[1]) for path in files for line in path.read_text().splitlines()]


# --- one bad delta in a batch ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_delta_of_a_deleted_user_is_dead_lettered_and_the_rest_of_its_batch_committed(tmp_path, alice, gpt,
                                                                                      caplog):
    ghost = User.objects.create_user("ghost")
    ghost_id = ghost.pk
    ghost.delete()  # deleted while the gateway still had their key cached

    async def scenario():
        store = UsageStore(buffer_dir=tmp_path)
        await store.open()
        try:
            batch = [delta(alice.pk, gpt, 1), delta(alice.pk, gpt, 2), delta(ghost_id, gpt, 40),
                     delta(alice.pk, gpt, 4), delta(alice.pk, gpt, 8)]
            await asyncio.gather(*(store.record(d) for d in batch))  # one group commit
            return store.status()
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="usage.degraded"):
        status = asyncio.run(scenario())
    assert totals() == (4, 15)  # the good deltas of the batch
    assert (status.rejected, status.database_up, status.buffered) == (1, True, 0)
    dead = rejected_lines(tmp_path)
    assert [(d["user_id"], d["input_tokens"]) for d in dead] == [(ghost_id, 40)]
    assert "IntegrityError" in dead[0]["reason"] or "ForeignKeyViolation" in dead[0]["reason"]
    assert caplog.text.count(REJECTED_MARKER) == 1
    assert [(e.kind, e.count) for e in BufferEvent.objects.all()] == [("rejected", 1)]  # reported on close
    assert not list(tmp_path.glob("*" + SEALED_SUFFIX))  # nothing was buffered as if the database were down

    # Once the cause is fixed (the user exists again), the dead letter replays, once.
    User.objects.create(pk=ghost_id, username="ghost")
    dead_file = next((tmp_path / "quarantine").glob("rejected-*.log"))
    call_command("drain_usage_buffer", "--from-log", str(dead_file), stdout=open(os.devnull, "w"))
    call_command("drain_usage_buffer", "--from-log", str(dead_file), stdout=open(os.devnull, "w"))
    assert totals() == (5, 55)


@pytest.mark.django_db(transaction=True)
def test_a_buffered_delta_the_database_refuses_never_blocks_its_file(tmp_path, alice, gpt):
    ghost = User.objects.create_user("ghost")
    ghost_id = ghost.pk
    ghost.delete()
    writer = BufferWriter(tmp_path)
    writer.append_many([delta(alice.pk, gpt, 1), delta(ghost_id, gpt, 40), delta(alice.pk, gpt, 4)])
    writer.seal()
    writer.append_many([delta(alice.pk, gpt, 16)])  # a later file of the same process
    writer.seal()
    report = drain(tmp_path)
    assert (report.files, report.applied, report.rejected) == (2, 3, 1)
    assert totals() == (3, 21)
    assert not list(tmp_path.glob("*" + SEALED_SUFFIX))  # both files done: nothing left to block the next
    assert [d["input_tokens"] for d in rejected_lines(tmp_path)] == [40]


@pytest.mark.django_db(transaction=True)
def test_through_the_gateway_the_request_gets_its_answer_and_readyz_counts_the_rejected_delta(gw, caplog):
    import urllib.request

    from gateway.models import ApiKey

    doomed = User.objects.create_user("doomed")
    _, key = ApiKey.objects.create_key(doomed, name="cached")
    gw.server.refresh()
    doomed.delete()  # the gateway's key cache still holds the key until its next refresh
    client = gw.openai.with_options(api_key=key)
    with caplog.at_level(logging.ERROR, logger="usage.degraded"):
        response = client.chat.completions.create(model="gpt-test", messages=chat("Hello"))
    assert response.choices[0].message.content.startswith("Mock reply")
    assert ledger()["requests"] == 0
    with urllib.request.urlopen(f"{gw.url}/readyz", timeout=10) as answer:
        assert json.loads(answer.read())["rejected"] == 1
    assert caplog.text.count(REJECTED_MARKER) == 1


# --- numbers past what a counter holds (issue #27) ----------------------------------------------------

BIGINT_MAX = 2**63 - 1


def big(user_id, facade, tokens, at=T0):
    """A delta of many tokens and a small cost (the bound under test is the tokens')."""
    return UsageDelta(id=uuid.uuid4().hex, user_id=user_id, facade_id=facade.pk, at=at, input_tokens=tokens,
                      cost_nanos=1)


def counter_types() -> set[str]:
    """The types the database holds the 5-minute counters in ('integer' only, never 'real')."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT DISTINCT typeof(input_tokens) FROM usage_bucket_5min")
        else:
            cursor.execute("SELECT DISTINCT pg_typeof(input_tokens)::text FROM usage_bucket_5min")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_a_delta_past_64_bits_is_dead_lettered_and_its_batch_committed(tmp_path, alice, gpt):
    """Catches a value error that fails a whole batch (SQLite's driver raised OverflowError, which
    was neither "unavailable" nor "rejected": every request of the batch got a 500)."""
    async def scenario():
        store = UsageStore(buffer_dir=tmp_path)
        await store.open()
        try:
            batch = [delta(alice.pk, gpt, n) for n in range(1, 21)] + [delta(alice.pk, gpt, 2**63 + 7)]
            await asyncio.gather(*(store.record(d) for d in batch))  # one group commit
            return store.status()
        finally:
            await store.close()

    status = asyncio.run(scenario())
    assert totals() == (20, 210)  # 1 + 2 + ... + 20
    assert (status.rejected, status.buffered) == (1, 0)
    assert [d["input_tokens"] for d in rejected_lines(tmp_path)] == [2**63 + 7]


@pytest.mark.django_db(transaction=True)
def test_sums_across_2_53_stay_exact_and_a_bucket_past_2_63_is_refused_not_wrapped(tmp_path, alice, gpt):
    """Catches counters that turn into floats: SQLite made a sum past 2**63 a float (2**62 + 2**62
    read back as 9223372036854775808.0, inexact from then on)."""
    async def write(*batch):
        store = UsageStore(buffer_dir=tmp_path)
        await store.open()
        try:
            await asyncio.gather(*(store.record(d) for d in batch))
            return store.status()
        finally:
            await store.close()

    asyncio.run(write(big(alice.pk, gpt, 2**53 - 1), big(alice.pk, gpt, 4)))
    assert totals() == (2, 2**53 + 3)  # as a float it would read 2**53 + 4
    asyncio.run(write(big(alice.pk, gpt, 2**62)))
    assert totals() == (3, 2**62 + 2**53 + 3)
    status = asyncio.run(write(big(alice.pk, gpt, 2**62)))  # the bucket would pass 2**63 - 1
    assert status.rejected == 1
    assert totals() == (3, 2**62 + 2**53 + 3)  # unchanged: refused whole, never wrapped or rounded
    assert counter_types() == ({"integer"} if connection.vendor == "sqlite" else {"bigint"})
    dead = rejected_lines(tmp_path)
    assert [d["input_tokens"] for d in dead] == [2**62]
    assert "integer" in dead[0]["reason"] or "out of range" in dead[0]["reason"]


@pytest.mark.django_db(transaction=True)
def test_a_rollup_whose_sum_passes_2_63_dead_letters_that_group_and_moves_on(tmp_path, alice, bob, gpt, settings):
    """Catches a rollup stalled by one sum past 2**63 (every later hour would stay unrolled)."""
    from usage.degraded.deadletter import ROLLUP_REFUSED_MARKER
    from usage.ledger.plan import record_many
    from usage.models import HourlyUsage
    from usage.rollups import roll_up, watermark

    settings.USAGE_BUFFER_DIR = tmp_path
    # Two 5-minute buckets of one hour, each within 64 bits; their hour's sum is not. Bob's fits.
    half_past = T0.replace(minute=30)
    record_many([big(alice.pk, gpt, 2**62 + 1), big(bob.pk, gpt, 5), big(alice.pk, gpt, 2**62, at=half_past),
                 big(bob.pk, gpt, 6, at=half_past),
                 big(bob.pk, gpt, 7, at=T0.replace(hour=11))])  # a later hour, rolled all the same
    summary = roll_up(until=T0.replace(hour=12), now=T0.replace(hour=13))
    assert watermark() == T0.replace(hour=12) and summary.hours == 3
    hours = sorted((r.bucket_start.hour, r.user_id, r.input_tokens) for r in HourlyUsage.objects.all())
    assert hours == [(9, bob.pk, 11), (11, bob.pk, 7)]
    refused = [json.loads(line.split(ROLLUP_REFUSED_MARKER, 1)[1])
               for path in (tmp_path / "quarantine").glob("rejected-*.log") for line in path.read_text().splitlines()
               if ROLLUP_REFUSED_MARKER in line]
    assert [(r["table"], r["user_id"], r["input_tokens"]) for r in refused] == [
        ("usage_bucket_hour", alice.pk, str(2**63 + 1))]


# --- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, mounted for the test (CI runs as root). Anything else is a loud skip, and a
    failure under CI=true: RLIMIT_FSIZE is no full disk (it raises EFBIG and signals the process)."""
    if os.geteuid() != 0:
        cannot_run("root, to mount a small tmpfs as a real full disk (run the tests as root, as CI does)")
    if shutil.which("mount") is None:
        cannot_run("the mount command (util-linux), to mount a small tmpfs as a real full disk")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode:
        cannot_run(f"a tmpfs mount for the full-disk tests (mount said: {result.stderr.strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_leaves_no_torn_record_and_says_so(full_disk, alice_id=7, facade_id=3):
    writer = BufferWriter(full_disk, max_bytes=1 << 30)
    stored = []
    with pytest.raises(OSError):
        for index in range(10_000):
            batch = [UsageDelta(id=f"d{index}-{n}", user_id=alice_id, key_id=1, facade_id=facade_id, at=T0,
                                input_tokens=index) for n in range(3)]
            writer.append_many(batch)
            stored += batch
    files = sorted(full_disk.glob("*"))
    parsed = [decode(path.read_bytes()) for path in files if path.is_file()]
    assert len(stored) > 0
    assert [d.id for p in parsed for d in p.deltas] == [d.id for d in stored]  # every acknowledged delta, in order
    assert all(p.torn_tail == b"" and p.corrupt == [] for p in parsed)  # and nothing torn


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fail_open", [False, True])
def test_database_down_and_disk_full_refuses_or_logs_and_loses_nothing_silently(full_disk, alice, gpt, caplog,
                                                                                  fail_open):
    proxy = PgProxy(connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
    proxy.set_mode("down")
    from tests.test_store import proxied_store

    async def scenario():
        store = proxied_store(proxy, full_disk, fail_open=fail_open)
        await store.open()
        try:
            sent = []
            for index in range(2000):
                if not store.accepting:
                    break
                batch = [delta(alice.pk, gpt, index + 1)]
                await store.record(batch[0])
                sent += batch
            return store.status(), sent
        finally:
            await store.close()

    try:
        with caplog.at_level(logging.CRITICAL, logger="codevector.usage"):
            status, sent = asyncio.run(scenario())
    finally:
        proxy.close()
    buffered = [d for path in full_disk.glob("*") if path.is_file() for d in decode(path.read_bytes()).deltas]
    from usage.degraded.deadletter import deltas_from_log

    logged = deltas_from_log(caplog.text.splitlines())
    assert status.buffer_writable is False and status.lost >= 1
    assert status.lost == len(logged)  # each delta the store counts as lost is in the log, once
    assert status.accepting is fail_open
    if not fail_open:
        assert len(sent) < 2000  # refused once nothing could record
    # Every delta the store took is on disk whole or logged for replay, none twice, none missing.
    assert sorted(d.id for d in buffered + logged) == sorted(d.id for d in sent)
    assert len({d.id for d in buffered} & {d.id for d in logged}) == 0
