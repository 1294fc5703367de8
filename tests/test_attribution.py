"""Which API key a request is recorded against (issue #31, item 1): through the gateway, through
the disk buffer's format and its drain, through a `drain_usage_buffer --from-log` replay, and
through rollups — each grouped by key and compared exactly, the user's reserved key absent.

Each test names the break it catches: the key set to nothing where the pipeline builds its delta
(all live usage moves to the user's reserved key), the key dropped from the buffer's disk format
or the log line (all buffered usage moves there), the key lost by a rollup."""

import io
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db.models import Sum

from gateway.models import ApiKey
from tests.test_gateway_app import chat, gw  # noqa: F401 (gw)
from usage.degraded.buffer import BufferWriter
from usage.degraded.deadletter import LOST_MARKER
from usage.degraded.drain import drain
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import FiveMinuteUsage, HourlyUsage
from usage.reserved import RESERVED_KEY_NAME

FIELDS = ("requests", "input_tokens", "output_tokens", "cost_nanos")


def by_key(model=FiveMinuteUsage) -> dict[int, dict[str, int]]:
    rows = model.objects.values("key_id").annotate(**{f: Sum(f) for f in FIELDS})
    return {row["key_id"]: {f: row[f] for f in FIELDS} for row in rows}


def reserved_keys() -> set[int]:
    return set(ApiKey.objects.filter(name=RESERVED_KEY_NAME).values_list("pk", flat=True))


@pytest.mark.django_db(transaction=True)
def test_each_request_through_the_gateway_is_recorded_against_the_key_that_made_it(gw):
    """Catches: the pipeline building its delta with key_id=None (the ledger would put every
    request on the user's reserved key, and every total over all keys would still be right)."""
    first = ApiKey.objects.get(user=gw.user, name="tests")
    second, raw_second = ApiKey.objects.create_key(gw.user, name="second")
    gw.server.refresh()
    other = gw.openai.with_options(api_key=raw_second)
    other_anthropic = gw.anthropic.with_options(api_key=raw_second)
    seen = {first.pk: [], second.pk: []}
    for _ in range(3):  # key 1: three chat completions, two Responses, one Anthropic message
        seen[first.pk].append(gw.openai.chat.completions.create(model="gpt-test", messages=chat("Hi")).usage)
    for _ in range(2):
        seen[first.pk].append(gw.openai.responses.create(model="gpt-test", input="Hello").usage)
    seen[first.pk].append(gw.anthropic.messages.create(model="claude-test", max_tokens=32, messages=chat("Hi")).usage)
    # key 2: one chat completion, two Anthropic messages, and a stream the caller cuts after its first event
    seen[second.pk].append(other.chat.completions.create(model="gpt-test", messages=chat("Hello there")).usage)
    for _ in range(2):
        seen[second.pk].append(other_anthropic.messages.create(model="claude-test", max_tokens=32,
                                                               messages=chat("Hello")).usage)
    gw.mock.chunk_delay = 0.2  # slow enough that the caller leaves long before the usage chunk
    try:
        with other.chat.completions.create(model="gpt-test", messages=chat("A cut stream"), stream=True) as stream:
            next(iter(stream))
    finally:
        gw.mock.chunk_delay = 0
    deadline = datetime.now() + timedelta(seconds=10)
    while FiveMinuteUsage.objects.filter(key=second).aggregate(n=Sum("requests"))["n"] != 4 \
            and datetime.now() < deadline:  # the cut stream is recorded once the gateway sees the caller leave
        time.sleep(0.02)
    recorded = by_key()
    assert set(recorded) == {first.pk, second.pk}  # no reserved key, no other key
    assert not reserved_keys() & set(recorded)
    assert (recorded[first.pk]["requests"], recorded[second.pk]["requests"]) == (6, 4)

    def input_of(usage):
        return getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", 0) + (
            getattr(usage, "cache_read_input_tokens", 0) or 0) + (getattr(usage, "cache_creation_input_tokens", 0) or 0)

    assert recorded[first.pk]["input_tokens"] == sum(input_of(u) for u in seen[first.pk])
    # Key 2's cut stream is estimated from its prompt ("A cut stream": 12 characters, 3 tokens).
    assert recorded[second.pk]["input_tokens"] == sum(input_of(u) for u in seen[second.pk]) + 3


def deltas_for(alice, gpt, keys) -> list[UsageDelta]:
    at = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    return [UsageDelta(id=uuid.uuid4().hex, user_id=alice.pk, key_id=key.pk, facade_id=gpt.pk,
                       at=at + timedelta(minutes=7 * i), requests=1, input_tokens=10 * (i + 1), output_tokens=i,
                       cost_nanos=1000 * (i + 1))
            for i, key in enumerate(keys)]


def expected(deltas) -> dict[int, dict[str, int]]:
    out = {}
    for d in deltas:
        row = out.setdefault(d.key_id, dict.fromkeys(FIELDS, 0))
        for f in FIELDS:
            row[f] += getattr(d, f)
    return out


@pytest.mark.django_db(transaction=True)
def test_buffered_deltas_keep_their_key_through_the_disk_format_and_the_drain(tmp_path, alice, gpt):
    """Catches: the key dropped from the buffer's record format (an outage's usage would all land
    on the reserved key once drained)."""
    k1, _ = ApiKey.objects.create_key(alice, name="k1")
    k2, _ = ApiKey.objects.create_key(alice, name="k2")
    deltas = deltas_for(alice, gpt, [k1, k2, k2, k1, k2])
    writer = BufferWriter(tmp_path)
    writer.append_many(deltas)
    writer.seal()
    assert drain(tmp_path).applied == 5
    assert by_key() == expected(deltas) == {k1.pk: {"requests": 2, "input_tokens": 10 + 40, "output_tokens": 0 + 3,
                                                    "cost_nanos": 1000 + 4000},
                                            k2.pk: {"requests": 3, "input_tokens": 20 + 30 + 50,
                                                    "output_tokens": 1 + 2 + 4, "cost_nanos": 2000 + 3000 + 5000}}


@pytest.mark.django_db(transaction=True)
def test_a_from_log_replay_and_the_rollups_keep_each_key(tmp_path, alice, gpt):
    """Catches: the key dropped from a `usage_delta_lost` line, or lost when hours are rolled up."""
    from usage.rollups import roll_up

    k1, _ = ApiKey.objects.create_key(alice, name="k1")
    k2, _ = ApiKey.objects.create_key(alice, name="k2")
    logged = deltas_for(alice, gpt, [k2, k1, k2])
    log = tmp_path / "gateway.log"
    log.write_text("".join(f"2026-07-01 ERROR codevector.usage {LOST_MARKER}{json.dumps(d.to_dict())}\n"
                           for d in logged))
    call_command("drain_usage_buffer", "--from-log", str(log), stdout=io.StringIO())
    assert by_key() == expected(logged)
    live = deltas_for(alice, gpt, [k1, k1])
    record_many(live)
    roll_up(until=datetime(2026, 7, 1, 11, tzinfo=UTC), now=datetime(2026, 7, 1, 12, tzinfo=UTC))
    assert by_key(HourlyUsage) == expected(logged + live)
    assert not reserved_keys() & set(by_key(HourlyUsage))
