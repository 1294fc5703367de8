"""Latency through a database outage: the gateway (two workers) on a private PostgreSQL cluster
that is stopped after a third of the requests and started again after two thirds.

Prints p50/p99 before, during and after the outage, the added p99 during the outage (goal: at
most 50 ms after the first failure), and the ledger's totals against what the clients were told.

Run: .venv/bin/python bench/outage.py [--requests 3000] [--concurrency 32]
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")

from tests.support.pg_cluster import PrivateCluster  # noqa: E402
from tests.support.servers import manage, start_gateway, start_mock_upstream  # noqa: E402


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000 if ordered else float("nan")


async def drive(base_url, key, cluster, total, concurrency):
    import aiohttp

    body = {"model": "gpt-outage", "messages": [{"role": "user", "content": "How long does this take?"}]}
    phases = {"before": [], "outage": [], "after": []}
    phase, done, issued, output_tokens, first_failure_at = "before", 0, 0, 0, None
    lock = asyncio.Lock()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
        async def worker():
            nonlocal phase, done, issued, output_tokens
            while True:
                async with lock:
                    if issued >= total:
                        return
                    issued += 1
                started = time.perf_counter()
                async with session.post(f"{base_url}/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"}) as response:
                    data = await response.json()
                    assert response.status == 200, data
                phases[phase].append(time.perf_counter() - started)
                output_tokens += data["usage"]["completion_tokens"]
                async with lock:
                    done += 1
                    if done == total // 3:
                        await asyncio.to_thread(cluster.stop)
                        phase = "outage"
                    elif done == 2 * total // 3:
                        await asyncio.to_thread(cluster.start)
                        phase = "after"

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return phases, output_tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cv-outage-"))
    cluster = PrivateCluster()
    processes = []
    try:
        cluster.start()
        url = cluster.create_database("codevector")
        manage(url, "migrate", "-v0")
        mock, mock_url = start_mock_upstream(workdir)
        processes.append(mock)
        manage(url, "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('bench')")
        manage(url, "create_facade", "gpt-outage", "--provider", "openai", "--base-url", f"{mock_url}/v1",
               "--input-price", "0.15", "--output-price", "0.6")
        key = manage(url, "create_api_key", "bench").strip().splitlines()[-1]
        gateway, base_url = start_gateway(url, workdir, workers=2, env={
            "USAGE_DB_RETRY_SECONDS": "0.5", "USAGE_DRAIN_INTERVAL_SECONDS": "0.5", "LOG_LEVEL": "WARNING"})
        processes.append(gateway)
        phases, output_tokens = asyncio.run(drive(base_url, key, cluster, args.requests, args.concurrency))
        deadline = time.monotonic() + 60
        import psycopg

        while True:
            with psycopg.connect(url) as conn:
                counted = conn.execute("SELECT coalesce(sum(requests),0), coalesce(sum(output_tokens),0) "
                                       "FROM usage_bucket_5min").fetchone()
            if counted == (args.requests, output_tokens) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"\nbench/outage.py — {args.requests} requests, {args.concurrency} in flight, gateway with 2 workers")
        for name, samples in phases.items():
            print(f"  {name:7} {len(samples):5} requests  p50 {percentile(samples, .5):7.2f} ms  "
                  f"p99 {percentile(samples, .99):7.2f} ms  max {percentile(samples, 1.0):7.2f} ms")
        added = percentile(phases["outage"], .99) - percentile(phases["before"], .99)
        print(f"  added p99 during the outage: {added:.2f} ms (goal: at most 50 ms)")
        print(f"  ledger after the drain: {counted[0]} requests, {counted[1]} output tokens; clients were told "
              f"{args.requests} requests, {output_tokens} output tokens -> "
              f"{'EXACT' if counted == (args.requests, output_tokens) else 'MISMATCH'}")
    finally:
        for process in processes:
            process.stop()
        cluster.destroy()


if __name__ == "__main__":
    main()
