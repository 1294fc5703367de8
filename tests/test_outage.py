"""Degraded mode end to end: the real gateway (two gunicorn workers) on a private PostgreSQL
cluster that is stopped and restarted while SDK clients send 600 requests."""

import asyncio
import time

import psycopg
import pytest

from tests.support.pg_cluster import PrivateCluster
from tests.support.servers import manage, start_gateway, start_mock_upstream
from usage.pricing import Prices, cost_nanos

PRICES = Prices(input_micros=150_000, cached_input_micros=75_000, output_micros=600_000)
TOTAL = 600


async def send_all(base_url: str, key: str, cluster: PrivateCluster, concurrency: int = 12):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)
    results, done, next_index = [], 0, 0
    lock = asyncio.Lock()
    phases = {"before": [], "outage": [], "after": []}
    phase = "before"

    async def worker():
        nonlocal done, next_index, phase
        while True:
            async with lock:
                if next_index >= TOTAL:
                    return
                index = next_index
                next_index += 1
            started = time.monotonic()
            response = await client.chat.completions.create(
                model="outage-gpt", messages=[{"role": "user", "content": f"request {index} " + "x" * (index % 40)}])
            phases[phase].append(time.monotonic() - started)
            results.append(response.usage)
            async with lock:
                done += 1
                if done == TOTAL // 3:
                    await asyncio.to_thread(cluster.stop)
                    phase = "outage"
                elif done == 2 * TOTAL // 3:
                    await asyncio.to_thread(cluster.start)
                    phase = "after"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return results, phases


def ledger_totals(url: str):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0), "
                            "coalesce(sum(cached_input_tokens), 0), coalesce(sum(output_tokens), 0), "
                            "coalesce(sum(cost_nanos), 0), coalesce(sum(error_requests), 0) "
                            "FROM usage_bucket_5min").fetchone()


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.postgres_only
def test_a_database_stop_mid_traffic_loses_nothing_and_counts_nothing_twice(tmp_path):
    cluster = PrivateCluster()
    mock = gateway = None
    try:
        cluster.start()
        url = cluster.create_database("codevector")
        manage(url, "migrate", "-v0")
        mock, mock_url = start_mock_upstream(tmp_path)
        manage(url, "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('carol')")
        manage(url, "create_facade", "outage-gpt", "--provider", "openai", "--base-url", f"{mock_url}/v1",
               "--upstream-model", "gpt-4o-mini", "--input-price", "0.15", "--cached-input-price", "0.075",
               "--output-price", "0.60")
        key = manage(url, "create_api_key", "carol").strip().splitlines()[-1]
        gateway, base_url = start_gateway(url, tmp_path, workers=2,
                                          env={"USAGE_DB_RETRY_SECONDS": "0.5", "USAGE_DRAIN_INTERVAL_SECONDS": "0.5"})
        results, phases = asyncio.run(send_all(base_url, key, cluster))

        assert len(results) == TOTAL
        expected = (
            TOTAL,
            sum(u.prompt_tokens for u in results),
            sum((u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0 for u in results),
            sum(u.completion_tokens for u in results),
            sum(cost_nanos(PRICES, input_tokens=u.prompt_tokens,
                           cached_input_tokens=(u.prompt_tokens_details.cached_tokens or 0)
                           if u.prompt_tokens_details else 0,
                           cache_write_tokens=0, output_tokens=u.completion_tokens) for u in results),
            0,
        )
        deadline = time.monotonic() + 60
        while ledger_totals(url) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ledger_totals(url) == expected
        assert len(phases["outage"]) >= TOTAL // 3 - 12
        # No request during the outage waited on a database timeout (USAGE_DB_TIMEOUT_SECONDS is 2 s).
        assert p99(phases["outage"]) < 1.0, (p99(phases["before"]), p99(phases["outage"]))
        log = gateway.output()
        assert "buffering usage on disk" in log and "replayed" in log, log[-3000:]
    finally:
        for process in (gateway, mock):
            if process:
                process.stop()
        cluster.destroy()
