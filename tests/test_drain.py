"""usage.degraded.drain and manage.py drain_usage_buffer: buffered deltas are replayed exactly once."""

import io
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command

from usage.degraded.buffer import QUARANTINE, BufferWriter, encode
from usage.degraded.deadletter import LOST_MARKER
from usage.degraded.drain import drain
from usage.ledger.delta import UsageDelta, five_minute_start
from usage.models import AppliedDelta, FiveMinuteUsage
from usage.sql import COUNTERS

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def make_deltas(users, facades, count, seed):
    rng = random.Random(seed)
    return [
        UsageDelta(id=uuid.UUID(int=rng.getrandbits(128)).hex, user_id=rng.choice(users).pk,
                   facade_id=rng.choice(facades).pk, at=T0 + timedelta(seconds=rng.randrange(0, 3600)),
                   input_tokens=rng.randrange(0, 9000), output_tokens=rng.randrange(0, 900),
                   cost_nanos=rng.randrange(0, 10**9), error_requests=rng.randrange(0, 2))
        for _ in range(count)
    ]


def expected_table(deltas):
    table: dict = {}
    for d in deltas:
        row = table.setdefault((five_minute_start(d.at), d.user_id, d.facade_id), dict.fromkeys(COUNTERS, 0))
        for name in COUNTERS:
            row[name] += getattr(d, name)
    return table


def actual_table():
    return {(r.bucket_start, r.user_id, r.facade_id): {c: getattr(r, c) for c in COUNTERS}
            for r in FiveMinuteUsage.objects.all()}


def buffer_files(directory, deltas, per_file):
    writer = BufferWriter(directory)
    for start in range(0, len(deltas), per_file):
        writer.append_many(deltas[start : start + per_file])
        writer.seal()


def drain_command(*args):
    out = io.StringIO()
    call_command("drain_usage_buffer", *args, stdout=out)
    return out.getvalue()


def test_buffered_deltas_are_replayed_once_and_a_second_run_adds_nothing(tmp_path, alice, bob, gpt, claude):
    deltas = make_deltas([alice, bob], [gpt, claude], 300, seed=1)
    buffer_files(tmp_path, deltas, per_file=70)
    out = drain_command("--dir", str(tmp_path))
    assert "Replayed 300 deltas from 5 file(s); 0 already applied" in out
    assert actual_table() == expected_table(deltas)
    buffer_files(tmp_path, deltas[:50], per_file=50)  # the same ids buffered again
    assert "Replayed 0 deltas from 1 file(s); 50 already applied" in drain_command("--dir", str(tmp_path))
    assert actual_table() == expected_table(deltas)
    assert list(tmp_path.iterdir()) == []


def test_a_torn_record_is_reported_and_garbage_is_quarantined(tmp_path, alice, gpt):
    deltas = make_deltas([alice], [gpt], 6, seed=2)
    (tmp_path / "host_1_1_000001.buf").write_bytes(b"".join(encode(d) for d in deltas[:3]) + encode(deltas[3])[:-9])
    (tmp_path / "host_2_1_000001.buf").write_bytes(b"\x00\xffnot a buffer at all\n" + encode(deltas[4]))
    (tmp_path / "host_3_1_000001.buf").write_bytes(encode(deltas[5]))
    out = drain_command("--dir", str(tmp_path))
    assert "Replayed 5 deltas from 3 file(s); 0 already applied (skipped); 1 torn record(s) skipped; " \
           "1 file(s) quarantined." in out
    assert actual_table() == expected_table([deltas[i] for i in (0, 1, 2, 4, 5)])
    assert [p.name for p in (tmp_path / QUARANTINE).iterdir()] == ["host_2_1_000001.buf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [QUARANTINE]


def test_an_open_file_is_left_to_its_live_writer(tmp_path, alice, gpt):
    writer = BufferWriter(tmp_path)
    writer.append_many(make_deltas([alice], [gpt], 3, seed=3))
    assert drain(tmp_path).files == 0
    assert FiveMinuteUsage.objects.count() == 0
    writer.seal()
    assert drain(tmp_path).applied == 3


def test_lost_deltas_logged_as_one_line_each_are_replayed_from_the_log_once(tmp_path, alice, gpt):
    import json

    deltas = make_deltas([alice], [gpt], 4, seed=4)
    log = tmp_path / "gateway.log"
    log.write_text("".join(f"2026-05-04 ERROR codevector.usage {LOST_MARKER}{json.dumps(d.to_dict())}\n"
                           for d in deltas) + "unrelated line\n")
    assert "Replayed 4 deltas" in drain_command("--from-log", str(log))
    assert "Replayed 0 deltas from 0 file(s); 4 already applied" in drain_command("--from-log", str(log))
    assert actual_table() == expected_table(deltas)


def spawn_drainer(url, directory):
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.Popen([sys.executable, "manage.py", "drain_usage_buffer", "--dir", str(directory)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.postgres_only
def test_drainers_killed_at_random_moments_then_rerun_count_every_delta_once(test_database_url, tmp_path, alice, bob,
                                                                               gpt, claude):
    deltas = make_deltas([alice, bob], [gpt, claude], 30_000, seed=5)
    buffer_files(tmp_path, deltas, per_file=1500)
    rng = random.Random(6)
    applied_after_each_kill = []
    for _ in range(10):
        before = AppliedDelta.objects.count()
        drainer = spawn_drainer(test_database_url, tmp_path)
        # Wait until this drainer has committed something, then strike at a random instant.
        deadline = time.monotonic() + 30
        while AppliedDelta.objects.count() == before and drainer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        drainer.kill()
        drainer.wait()
        applied_after_each_kill.append(AppliedDelta.objects.count())
    # The kills did land mid-replay: some, not all, deltas were applied when they struck.
    assert any(0 < n < len(deltas) for n in applied_after_each_kill), applied_after_each_kill
    final = spawn_drainer(test_database_url, tmp_path)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert actual_table() == expected_table(deltas)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres_only
def test_four_drainers_at_once_count_every_delta_once(test_database_url, tmp_path, alice, bob, gpt, claude):
    deltas = make_deltas([alice, bob], [gpt, claude], 8000, seed=7)
    buffer_files(tmp_path, deltas, per_file=500)
    drainers = [spawn_drainer(test_database_url, tmp_path) for _ in range(4)]
    outputs = [d.communicate(timeout=120) for d in drainers]
    assert [d.returncode for d in drainers] == [0, 0, 0, 0], outputs
    applied = sum(int(out.decode().split("Replayed ")[1].split()[0]) for out, _ in outputs)
    assert applied == 8000
    assert actual_table() == expected_table(deltas)


def test_replays_into_rolled_and_pruned_periods_are_exact_at_every_level(tmp_path, alice, gpt, settings):
    """Degraded mode meets the rollups: an outage's deltas replayed after their hours, days and
    month were rolled, and after their 5-minute rows were pruned."""
    from usage.reads import queries
    from usage import rollups
    from usage.models import DailyUsage, HourlyUsage, MonthlyUsage

    settings.USAGE_5MIN_RETENTION_DAYS = 1
    march = datetime(2026, 3, 1, tzinfo=UTC)
    live = [UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, facade_id=gpt.pk, at=march + timedelta(hours=h),
                       input_tokens=100, cost_nanos=1000) for h in range(0, 24 * 40, 7)]
    from usage.ledger.plan import record_many

    record_many(live)
    now = datetime(2026, 4, 12, tzinfo=UTC)
    rollups.roll_up(now=now)
    rollups.prune(now=now)
    assert FiveMinuteUsage.objects.filter(bucket_start__lt=datetime(2026, 4, 1, tzinfo=UTC)).count() == 0
    buffered = [UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, facade_id=gpt.pk,
                           at=march + timedelta(days=d, minutes=13), input_tokens=1, cost_nanos=1) for d in range(40)]
    buffer_files(tmp_path, buffered, per_file=15)
    drain(tmp_path)
    everything = live + buffered
    rolled = rollups.watermark()
    assert rolled == datetime(2026, 4, 11, 23, tzinfo=UTC)  # now minus the grace, to the hour
    # Each level holds exactly the deltas of the periods it has rolled: hours before the
    # watermark, whole days before its day, whole months before its month.
    for model, end in ((HourlyUsage, rolled), (DailyUsage, datetime(2026, 4, 11, tzinfo=UTC)),
                       (MonthlyUsage, datetime(2026, 4, 1, tzinfo=UTC))):
        assert sum(r.input_tokens for r in model.objects.all()) == sum(
            d.input_tokens for d in everything if d.at < end), model.__name__
    assert MonthlyUsage.objects.get(bucket_start=march).input_tokens == sum(
        d.input_tokens for d in everything if d.at < datetime(2026, 4, 1, tzinfo=UTC))
    assert queries.totals_between(march, now).input_tokens == sum(d.input_tokens for d in everything)
