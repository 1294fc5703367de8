"""Late deltas written by separate processes while rollups run concurrently (PostgreSQL): the
watermark lock orders them, so every level is exact."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum

from gateway.models import ModelFacade
from tests.support.ledger_writer_process import ANCHOR, deltas_for
from usage import rollups
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage
from usage.calendar import day_bounds

ROOT = Path(__file__).resolve().parent.parent
HOURS = 30
ROLLER = f"""
import time, django
from datetime import datetime, timedelta, UTC
django.setup()
from usage import rollups
start = datetime.fromisoformat({ANCHOR.isoformat()!r})
rollups.ensure_state()
from usage.models import RollupState
RollupState.objects.filter(pk=1).update(watermark=start)
end = start + timedelta(hours={HOURS})
far = end + timedelta(days=30)
while (rollups.watermark() or start) < end:
    rollups.roll_up(until=rollups.watermark() + timedelta(hours=1), now=far)
    time.sleep(0.02)
"""


@pytest.mark.postgres_only
def test_late_deltas_racing_rollups_are_exact_at_every_level(test_database_url):
    users = [User.objects.create_user(f"racer{i}").pk for i in range(3)]
    facades = [ModelFacade.objects.create(name=f"race{i}", provider="openai", base_url="http://127.0.0.1:9/v1").pk
               for i in range(2)]
    env = {**os.environ, "DATABASE_URL": test_database_url}
    args = [",".join(map(str, users)), ",".join(map(str, facades)), "--sync", "--spread", str(HOURS * 3600)]
    roller = subprocess.Popen([sys.executable, "-c", ROLLER], cwd=ROOT, env=env)
    writers = [subprocess.Popen([sys.executable, "tests/support/ledger_writer_process.py", str(seed), "600", *args],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for seed in range(3)]
    assert [w.wait(timeout=180) for w in writers] == [0, 0, 0]
    assert roller.wait(timeout=180) == 0
    deltas = [d for seed in range(3) for d in deltas_for(seed, 600, users, facades, HOURS * 3600)]
    watermark = rollups.watermark()
    assert watermark == ANCHOR + timedelta(hours=HOURS)
    expected = sum(d.input_tokens for d in deltas)
    assert FiveMinuteUsage.objects.aggregate(s=Sum("input_tokens"))["s"] == expected
    assert HourlyUsage.objects.aggregate(s=Sum("input_tokens"))["s"] == expected
    rolled_days = [d for d in deltas if d.at < day_bounds(watermark)[0]]  # 1 June, rolled at 2 June 00:00
    assert rolled_days and DailyUsage.objects.aggregate(s=Sum("input_tokens"))["s"] == \
        sum(d.input_tokens for d in rolled_days)
