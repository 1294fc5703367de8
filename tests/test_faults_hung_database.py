"""A database that stops answering (packets dropped, sockets left open) is an outage like one that
refuses: every wait on it on the request path is bounded by USAGE_DB_TIMEOUT_SECONDS. Two real
gunicorn workers, the database behind a proxy that blackholes it for longer than the timeout."""

import asyncio
import time

import aiohttp
import pytest
from django.contrib.auth.models import User
from django.db import connection

from gateway.models import ApiKey, ModelFacade
from tests.support.pg_proxy import PgProxy
from tests.support.servers import start_gateway, start_mock_upstream
from usage.models import FiveMinuteUsage

TIMEOUT = 1.0
BLACKHOLE_SECONDS = 3 * TIMEOUT


def totals():
    rows = list(FiveMinuteUsage.objects.all())
    return sum(r.requests for r in rows), sum(r.output_tokens for r in rows)


@pytest.mark.postgres_only
@pytest.mark.xdist_group("faults")
def test_a_blackholed_database_bounds_every_answer_and_the_totals_equal_the_answers(test_database_url, tmp_path):
    user = User.objects.create_user("hugo")
    _, key = ApiKey.objects.create_key(user, name="load")
    mock, mock_url = start_mock_upstream(tmp_path)
    ModelFacade.objects.create(name="gpt-h", provider="openai", base_url=f"{mock_url}/v1", upstream_model="gpt-h",
                               input_price_micros=150_000, output_price_micros=600_000)
    proxy = PgProxy(connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
    proxied_url = test_database_url.replace(f":{connection.settings_dict['PORT'] or 5432}/", f":{proxy.port}/")
    gateway, base_url = start_gateway(proxied_url, tmp_path, workers=2, env={
        "USAGE_DB_TIMEOUT_SECONDS": str(TIMEOUT), "USAGE_DB_RETRY_SECONDS": "0.2",
        "USAGE_DRAIN_INTERVAL_SECONDS": "0.5", "GATEWAY_CACHE_SECONDS": "30"})

    async def traffic():
        answered, slowest = [], 0.0
        body = {"model": "gpt-h", "messages": [{"role": "user", "content": "hello"}]}
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as session:
            async def one(index):
                nonlocal slowest
                started = time.monotonic()
                async with session.post(f"{base_url}/v1/chat/completions", json=body,
                                        timeout=aiohttp.ClientTimeout(total=30)) as response:
                    data = await response.json()
                    slowest = max(slowest, time.monotonic() - started)
                    if response.status == 200:
                        answered.append(data["usage"]["completion_tokens"])

            async def wave(count):
                await asyncio.gather(*(one(i) for i in range(count)))

            await wave(20)  # the database answers
            proxy.set_mode("blackhole")
            blackholed_at = time.monotonic()
            while time.monotonic() - blackholed_at < BLACKHOLE_SECONDS:
                await wave(8)  # every request answered, none later than the timeout + 2 s
            proxy.set_mode("up")
            await wave(20)
        return answered, slowest

    try:
        answered, slowest = asyncio.run(traffic())
        assert slowest <= TIMEOUT + 2, f"a request waited {slowest:.1f} s on a database that stopped answering"
        assert len(answered) >= 48
        deadline = time.monotonic() + 30  # the buffer drains once the database answers again
        while totals() != (len(answered), sum(answered)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert totals() == (len(answered), sum(answered))
    finally:
        gateway.stop()
        proxy.close()
        mock.stop()
    assert "database unavailable" in gateway.output()  # the breaker opened on the timeout
