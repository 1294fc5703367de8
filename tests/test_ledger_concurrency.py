"""8 writer processes, 500 random deltas each, a few keys and one hot key: every counter exact."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from gateway.models import ModelFacade
from tests.support.ledger_writer_process import deltas_for
from usage.ledger.delta import five_minute_start
from usage.models import FiveMinuteUsage
from usage.sql import COUNTERS

SCRIPT = Path(__file__).parent / "support" / "ledger_writer_process.py"


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_eight_processes_writing_concurrently_lose_and_double_nothing():
    users = [User.objects.create_user(f"writer{i}").pk for i in range(3)]
    facades = [ModelFacade.objects.create(name=f"m{i}", provider="openai", base_url="http://127.0.0.1:9/v1").pk
               for i in range(2)]
    settings_dict = connection.settings_dict
    url = (f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/"
           f"{settings_dict['NAME']}")
    env = {**os.environ, "DATABASE_URL": url}
    args = [",".join(map(str, users)), ",".join(map(str, facades))]
    # Half the processes go through the async group committer, half through the sync path.
    processes = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(seed), "500", *args, *(["--sync"] if seed % 2 else [])], env=env)
        for seed in range(8)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0] * 8

    expected: dict = {}
    for seed in range(8):
        for d in deltas_for(seed, 500, users, facades):
            row = expected.setdefault((five_minute_start(d.at), d.user_id, d.facade_id), dict.fromkeys(COUNTERS, 0))
            for name in COUNTERS:
                row[name] += getattr(d, name)
    actual = {
        (r.bucket_start, r.user_id, r.facade_id): {c: getattr(r, c) for c in COUNTERS}
        for r in FiveMinuteUsage.objects.all()
    }
    assert actual == expected
    assert sum(r["requests"] for r in actual.values()) == 4000
