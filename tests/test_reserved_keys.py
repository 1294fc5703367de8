"""Usage without a key — recorded before per-key accounting, buffered or logged in the old format —
belongs to its user's reserved key: one per user, revoked from birth, never usable; usage with a key
stays on that key."""

import json
import zlib
from datetime import UTC, datetime

import pytest
from django.core.management import call_command

from gateway.models import ApiKey, hash_key
from usage.degraded.buffer import MAGIC, SEALED_SUFFIX
from usage.degraded.deadletter import LOST_MARKER
from usage.degraded.drain import drain
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import FiveMinuteUsage

AT = datetime(2026, 5, 4, 10, 2, tzinfo=UTC)


def rows():
    return sorted((r.user_id, r.key_id, r.requests, r.output_tokens, r.cost_nanos)
                  for r in FiveMinuteUsage.objects.all())


def old_format(delta: UsageDelta) -> dict:
    """A delta as buffers and log lines held it before per-key accounting: no key_id."""
    data = delta.to_dict()
    del data["key_id"]
    return data


@pytest.fixture
def laptop(alice):
    return ApiKey.objects.create_key(alice, name="laptop")[0]


def test_a_delta_without_a_key_goes_to_the_users_reserved_key_and_one_with_a_key_to_its_own(alice, bob, gpt,
                                                                                           laptop):
    record_many([UsageDelta(id="a1", user_id=alice.pk, facade_id=gpt.pk, at=AT, output_tokens=7, cost_nanos=11),
                 UsageDelta(id="a2", user_id=alice.pk, key_id=laptop.pk, facade_id=gpt.pk, at=AT, output_tokens=5,
                            cost_nanos=13),
                 UsageDelta(id="b1", user_id=bob.pk, facade_id=gpt.pk, at=AT, output_tokens=3, cost_nanos=17)])
    record_many([UsageDelta(id="a3", user_id=alice.pk, facade_id=gpt.pk, at=AT, output_tokens=2, cost_nanos=19)])
    reserved = {k.user_id: k for k in ApiKey.objects.filter(name="before per-key accounting")}
    assert sorted(reserved) == sorted([alice.pk, bob.pk])  # one per user, made once
    assert rows() == sorted([(alice.pk, reserved[alice.pk].pk, 2, 9, 30), (alice.pk, laptop.pk, 1, 5, 13),
                             (bob.pk, reserved[bob.pk].pk, 1, 3, 17)])
    key = reserved[alice.pk]
    assert key.prefix == f"pre-{alice.pk}" and key.revoked_at is not None and not key.is_usable()
    assert not ApiKey.objects.usable().filter(pk=key.pk).exists()
    assert ApiKey.objects.find_usable(hash_key(key.digest)) is None


def test_an_old_format_buffer_file_drains_to_the_reserved_key(tmp_path, alice, gpt):
    delta = UsageDelta(id="buffered-1", user_id=alice.pk, facade_id=gpt.pk, at=AT, output_tokens=4, cost_nanos=23)
    payload = json.dumps(old_format(delta), separators=(",", ":"), sort_keys=True).encode()
    (tmp_path / f"host-1-1{SEALED_SUFFIX}").write_bytes(
        b"%s %d %08x %s\n" % (MAGIC, len(payload), zlib.crc32(payload), payload))
    report = drain(tmp_path)
    assert report.applied == 1
    reserved = ApiKey.objects.get(name="before per-key accounting", user=alice)
    assert rows() == [(alice.pk, reserved.pk, 1, 4, 23)]


def test_an_old_format_lost_delta_log_line_replays_to_the_reserved_key(tmp_path, alice, gpt):
    delta = UsageDelta(id="lost-1", user_id=alice.pk, facade_id=gpt.pk, at=AT, output_tokens=6, cost_nanos=29)
    log = tmp_path / "gateway.log"
    log.write_text(f"2026-05-04 ERROR codevector.usage {LOST_MARKER}{json.dumps(old_format(delta))}\n")
    call_command("drain_usage_buffer", "--from-log", str(log), stdout=open("/dev/null", "w"))
    reserved = ApiKey.objects.get(name="before per-key accounting", user=alice)
    assert rows() == [(alice.pk, reserved.pk, 1, 6, 29)]
