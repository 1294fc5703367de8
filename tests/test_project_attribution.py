"""A project's usage is its keys' usage (#30): two projects, three keys of two users, through the
gateway, through an outage's disk buffer and its drain, and through the rollups — each project's
totals exact at every level, and equal to what the SDK callers were told.

Catches: a key's spend counted in another project (the reads' project filter, or a key recorded
against its user's reserved key, which is in the Default project); usage lost or doubled per
project when a buffer is drained or an hour, day or month rolled up."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum

from gateway.models import ApiKey, Project, ProjectMember
from tests.test_gateway_app import chat, gw  # noqa: F401 (gw)
from usage.degraded.buffer import BufferWriter
from usage.degraded.drain import drain
from usage.ledger.delta import UsageDelta
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.reads.queries import totals_between
from usage.rollups import roll_up

FIELDS = ("requests", "input_tokens", "output_tokens", "cost_nanos")


def per_project(model) -> dict[str, dict[str, int]]:
    rows = model.objects.values("key__project__public_id").annotate(**{f: Sum(f) for f in FIELDS})
    return {row["key__project__public_id"]: {f: row[f] for f in FIELDS} for row in rows}


def read(project, start, end) -> dict[str, int]:
    totals = totals_between(start, end, project_id=project.pk)
    return {f: getattr(totals, f) for f in FIELDS}


def teams(carol, dan):
    atlas, borealis = Project.objects.create(name="Atlas"), Project.objects.create(name="Borealis")
    for project, user in ((atlas, carol), (atlas, dan), (borealis, carol)):
        ProjectMember.objects.create(project=project, user=user)
    return atlas, borealis


@pytest.mark.django_db(transaction=True)
def test_requests_through_the_gateway_count_in_their_keys_projects_exactly(gw):
    dan = User.objects.create_user("dan")
    atlas, borealis = teams(gw.user, dan)
    clients = {}
    for name, user, project in (("a-carol", gw.user, atlas), ("a-dan", dan, atlas), ("b-carol", gw.user, borealis)):
        _, raw = ApiKey.objects.create_key(user, name=name, project=project)
        clients[name] = gw.openai.with_options(api_key=raw)
    gw.server.refresh()
    told = {atlas.public_id: dict.fromkeys(FIELDS, 0), borealis.public_id: dict.fromkeys(FIELDS, 0)}
    for name, times in (("a-carol", 3), ("a-dan", 2), ("b-carol", 4)):
        project = (atlas if name.startswith("a-") else borealis).public_id
        for _ in range(times):
            raw = clients[name].chat.completions.with_raw_response.create(model="gpt-test", messages=chat("Hi"))
            usage = raw.parse().usage
            for field, value in (("requests", 1), ("input_tokens", usage.prompt_tokens),
                                 ("output_tokens", usage.completion_tokens),
                                 ("cost_nanos", int(Decimal(raw.headers["x-codevector-cost-usd"]) * 10**9))):
                told[project][field] += value
    assert told[atlas.public_id]["requests"] == 5 and told[borealis.public_id]["requests"] == 4
    assert per_project(FiveMinuteUsage) == told  # the Default project absent: no reserved key used
    now = datetime.now(UTC)
    start = now - timedelta(days=1)
    assert {p.public_id: read(p, start, now + timedelta(minutes=5)) for p in (atlas, borealis)} == told


@pytest.mark.django_db(transaction=True)
def test_an_outages_buffer_drained_and_rolled_up_keeps_each_projects_usage(tmp_path, alice, bob, gpt):
    atlas, borealis = teams(alice, bob)
    a_alice, _ = ApiKey.objects.create_key(alice, project=atlas)
    a_bob, _ = ApiKey.objects.create_key(bob, project=atlas)
    b_alice, _ = ApiKey.objects.create_key(alice, project=borealis)
    d_bob, _ = ApiKey.objects.create_key(bob)  # the Default project
    at = datetime(2026, 7, 30, 22, 50, tzinfo=UTC)  # across an hour, a day and a month boundary (UTC)
    spread = [(a_alice, 0), (a_bob, 7), (b_alice, 14), (a_alice, 21), (d_bob, 28), (b_alice, 60 * 26), (a_bob, 60 * 49)]
    deltas = [UsageDelta(id=uuid.uuid4().hex, user_id=key.user_id, key_id=key.pk, facade_id=gpt.pk,
                         at=at + timedelta(minutes=minutes), requests=1, input_tokens=100 + i, output_tokens=10 * i,
                         cost_nanos=1_000_003 * (i + 1))
              for i, (key, minutes) in enumerate(spread)]
    writer = BufferWriter(tmp_path)
    writer.append_many(deltas)
    writer.seal()
    assert drain(tmp_path).applied == 7
    assert drain(tmp_path).applied == 0  # a second drain replays nothing

    def expect(*indexes):
        return {"requests": len(indexes), "input_tokens": sum(100 + i for i in indexes),
                "output_tokens": sum(10 * i for i in indexes), "cost_nanos": sum(1_000_003 * (i + 1) for i in indexes)}

    want = {atlas.public_id: expect(0, 1, 3, 6), borealis.public_id: expect(2, 5), "proj_default": expect(4)}
    assert per_project(FiveMinuteUsage) == want
    roll_up(until=datetime(2026, 9, 1, tzinfo=UTC), now=datetime(2026, 9, 1, 1, tzinfo=UTC))
    for level in (HourlyUsage, DailyUsage, MonthlyUsage):
        assert per_project(level) == want, level.__name__
    whole = (datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC))
    assert read(atlas, *whole) == want[atlas.public_id]  # read from the rolled levels now
    assert read(borealis, *whole) == want[borealis.public_id]
    # Part of a month and part of a day: the reads mix levels and stay exact.
    assert read(atlas, datetime(2026, 7, 30, 23, tzinfo=UTC), datetime(2026, 8, 1, 0, tzinfo=UTC)) == expect(3)
