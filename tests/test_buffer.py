"""usage.degraded.buffer: framed, checksummed records; torn tails and damage are told apart."""

import fcntl
import os
import uuid
from datetime import UTC, datetime

import pytest

from usage.degraded.buffer import OPEN_SUFFIX, SEALED_SUFFIX, BufferWriter, decode, encode
from usage.ledger.delta import UsageDelta

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

T0 = datetime(2026, 5, 4, 10, 7, 31, 250000, tzinfo=UTC)


def delta(n=1):
    return UsageDelta(id=uuid.uuid4().hex, user_id=1, facade_id=2, at=T0, input_tokens=n, output_tokens=2 * n,
                      cost_nanos=10**12 + n)


def test_records_round_trip_exactly():
    deltas = [delta(n) for n in range(5)]
    parsed = decode(b"".join(encode(d) for d in deltas))
    assert parsed.deltas == deltas and parsed.torn_tail == b"" and parsed.corrupt == []


def test_a_torn_last_record_is_detected_and_skipped():
    deltas = [delta(n) for n in range(3)]
    data = b"".join(encode(d) for d in deltas)
    torn = data[: len(data) - 7]
    parsed = decode(torn)
    assert parsed.deltas == deltas[:2] and parsed.torn_tail and parsed.corrupt == []


def test_a_flipped_byte_fails_the_checksum_and_counts_as_damage():
    deltas = [delta(n) for n in range(3)]
    lines = [encode(d) for d in deltas]
    lines[1] = lines[1].replace(b'"input_tokens":1', b'"input_tokens":7')
    parsed = decode(b"".join(lines))
    assert parsed.deltas == [deltas[0], deltas[2]] and len(parsed.corrupt) == 1 and "line 2" in parsed.corrupt[0]


def test_the_writer_appends_fsyncs_holds_a_lock_and_seals(tmp_path):
    writer = BufferWriter(tmp_path)
    writer.append_many([delta(1), delta(2)])
    writer.append_many([delta(3)])
    (open_file,) = tmp_path.glob("*" + OPEN_SUFFIX)
    fd = os.open(open_file, os.O_RDONLY)
    with pytest.raises(BlockingIOError):  # the writer's lock keeps drainers away
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    writer.seal()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    (sealed,) = tmp_path.glob("*" + SEALED_SUFFIX)
    assert [d.input_tokens for d in decode(sealed.read_bytes()).deltas] == [1, 2, 3]


def test_the_writer_rotates_files_past_the_size_limit(tmp_path):
    writer = BufferWriter(tmp_path, max_bytes=600)
    for n in range(10):
        writer.append_many([delta(n)])
    writer.seal()
    files = sorted(tmp_path.glob("*" + SEALED_SUFFIX))
    assert len(files) > 2
    assert [d.input_tokens for f in files for d in decode(f.read_bytes()).deltas] == list(range(10))


def test_an_unwritable_directory_raises_instead_of_acknowledging(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    with pytest.raises(OSError):
        BufferWriter(blocked / "buffer").append_many([delta()])
