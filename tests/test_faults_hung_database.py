"""A database that stops answering (packets dropped, sockets left open) is an outage like one that
refuses: every wait on it on the request path is bounded by USAGE_DB_TIMEOUT_SECONDS. Two real
gunicorn workers, the database behind a proxy that blackholes it for longer than the timeout.

Breaks caught: a ledger write, a cut COMMIT's resolution or a key look-up left unbounded (requests
wait for the whole blackhole, past TIMEOUT + MARGIN); a request refused or dropped during it
(answered != sent); a delta lost or counted twice on the way through the buffer (the totals, per
key, after the drain, after the stop and after a manual drain).
"""

import asyncio
import time
from decimal import Decimal

import aiohttp
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Sum

from gateway.models import ApiKey, ModelFacade
from tests.support.pg_proxy import PgProxy
from tests.support.servers import manage, start_gateway, start_mock_upstream
from usage.models import FiveMinuteUsage

TIMEOUT = 1.0
BLACKHOLE_SECONDS = 3 * TIMEOUT
# What a bounded wait may take beyond TIMEOUT on a loaded two-core machine (scheduling, the buffer's
# fsync, the answer itself); far below the blackhole, which an unbounded wait would last.
MARGIN = 1.5
NANOS_PER_USD = 10**9


def totals_by_key() -> dict[int, tuple[int, int, int]]:
    """{key id: (requests, output tokens, cost in nanodollars)} over the whole ledger."""
    rows = FiveMinuteUsage.objects.values("key_id").annotate(
        requests=Sum("requests"), output=Sum("output_tokens"), cost=Sum("cost_nanos"))
    return {row["key_id"]: (row["requests"], row["output"], row["cost"]) for row in rows}


def expected_by_key(answers) -> dict[int, tuple[int, int, int]]:
    expected = {}
    for answer in answers:
        if answer["status"] == 200:
            requests, output, cost = expected.get(answer["key_id"], (0, 0, 0))
            expected[answer["key_id"]] = (requests + 1, output + answer["output"], cost + answer["cost"])
    return expected


@pytest.mark.postgres_only
@pytest.mark.xdist_group("faults")
@pytest.mark.timeout(180)
def test_a_blackholed_database_bounds_every_answer_and_the_totals_equal_the_answers(test_database_url, tmp_path):
    user = User.objects.create_user("hugo")
    loaded, key = ApiKey.objects.create_key(user, name="load")
    mock, mock_url = start_mock_upstream(tmp_path)
    ModelFacade.objects.create(name="gpt-h", provider="openai", base_url=f"{mock_url}/v1", upstream_model="gpt-h",
                               input_price_micros=150_000, output_price_micros=600_000)
    proxy = PgProxy(connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
    proxied_url = test_database_url.replace(f":{connection.settings_dict['PORT'] or 5432}/", f":{proxy.port}/")
    gateway, base_url = start_gateway(proxied_url, tmp_path, workers=2, env={
        "USAGE_DB_TIMEOUT_SECONDS": str(TIMEOUT), "USAGE_DB_RETRY_SECONDS": "0.2",
        "USAGE_DRAIN_INTERVAL_SECONDS": "0.5", "GATEWAY_CACHE_SECONDS": "30"})
    # Made after the gateway loaded its keys, which it reloads only every 30 s: unknown to its cache.
    fresh, fresh_key = ApiKey.objects.create_key(user, name="fresh")
    key_ids = {key: loaded.pk, fresh_key: fresh.pk}

    async def traffic():
        answers = []
        body = {"model": "gpt-h", "messages": [{"role": "user", "content": "hello"}]}
        async with aiohttp.ClientSession() as session:
            async def one(phase, raw_key=key):
                answer = {"phase": phase, "key_id": key_ids[raw_key], "status": None}
                answers.append(answer)
                started = time.monotonic()
                try:
                    async with session.post(f"{base_url}/v1/chat/completions", json=body,
                                            headers={"authorization": f"Bearer {raw_key}"},
                                            timeout=aiohttp.ClientTimeout(total=30)) as response:
                        data = await response.json()
                        answer["status"] = response.status
                        if response.status == 200:
                            answer["output"] = data["usage"]["completion_tokens"]
                            answer["cost"] = int(Decimal(response.headers["x-codevector-cost-usd"]) * NANOS_PER_USD)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    answer["error"] = repr(exc)
                answer["seconds"] = time.monotonic() - started

            async def wave(phase, count):
                await asyncio.gather(*(one(phase) for _ in range(count)))

            await wave("before", 20)  # the database answers
            proxy.set_mode("blackhole")
            blackholed_at = time.monotonic()
            # The fresh key's look-up, bounded like every other wait, beside the first wave.
            await asyncio.gather(wave("blackhole", 8), one("fresh key", fresh_key))
            while time.monotonic() - blackholed_at < BLACKHOLE_SECONDS:
                await wave("blackhole", 8)
            assert time.monotonic() - blackholed_at < BLACKHOLE_SECONDS + TIMEOUT + MARGIN
            proxy.set_mode("up")
            await wave("after", 20)
            await one("fresh key after", fresh_key)  # nothing remembered of the failed look-up
        return answers

    buffer_dir = tmp_path / "usage-buffer"
    try:
        answers = asyncio.run(traffic())
        by_phase = {phase: [a for a in answers if a["phase"] == phase] for phase in ("before", "blackhole", "after")}
        assert len(by_phase["blackhole"]) >= 16  # the blackhole outlasted two waves at least
        for phase, sent in by_phase.items():  # (the fresh key's own phases are checked below)
            answered = [a for a in sent if a["status"] == 200]
            assert len(answered) == len(sent), (phase, [a for a in sent if a["status"] != 200])
        slowest = max(a["seconds"] for a in answers)
        assert slowest <= TIMEOUT + MARGIN, f"a request waited {slowest:.1f} s on a database that stopped answering"

        # The fresh key could not be checked: the gateway stopped asking after TIMEOUT and answered
        # 503 (retry), not 401, and remembered nothing: once the database answers, the key works.
        # Catches: a look-up that fails being taken for an unknown key (401, negatively cached).
        [fresh_answer] = [a for a in answers if a["phase"] == "fresh key"]
        assert fresh_answer["status"] == 503, fresh_answer
        assert fresh_answer["seconds"] <= TIMEOUT + MARGIN, fresh_answer
        [fresh_after] = [a for a in answers if a["phase"] == "fresh key after"]
        assert fresh_after["status"] == 200, fresh_after

        expected = expected_by_key(answers)
        assert set(expected) == {loaded.pk, fresh.pk}
        deadline = time.monotonic() + 30  # the buffer drains once the database answers again
        while totals_by_key() != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert totals_by_key() == expected
    finally:
        gateway.stop()
        proxy.close()
        mock.stop()
    assert "database unavailable" in gateway.output()  # the breaker opened on the timeout
    # The workers' last writes on the way out, and their buffer files sealed: nothing added or lost.
    assert totals_by_key() == expected
    # A manual drain finds nothing left to replay, and counts nothing twice.
    out = manage(test_database_url, "drain_usage_buffer", "--dir", str(buffer_dir))
    assert out.startswith("Replayed 0 deltas"), out
    assert totals_by_key() == expected
