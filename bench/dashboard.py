"""Read times over a 90-day history equal to 10 million requests (2,000 users, 50 facades, a few
heavy users and models), filled in SQL with generate_series and rolled up, with today's 5-minute
rows un-rolled; plus the time to roll up one day.

Run: .venv/bin/python bench/dashboard.py [--requests 10000000] [--keep]
Uses the database codevector_bench_dash on BENCH_DATABASE_URL's server (recreated unless --keep
finds it filled already). Goals: network-wide 90-day summary + series + breakdown + leaderboard
together at most 100 ms p50; one user's at most 20 ms p50; one day's rollup at most 10 s.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
DB = "codevector_bench_dash"
os.environ["DATABASE_URL"] = f"{SERVER}/{DB}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")
os.environ.setdefault("USAGE_BUFFER_DIR", str(ROOT / "var" / "bench-buffer"))

FILL = """
WITH pairs AS (
    SELECT u.id AS user_id, f.id AS facade_id,
           -- a few heavy users and models: activity falls off with the user's and the facade's rank
           least(1.0, %(scale)s / (1 + (u.rank - 1) * 0.05) / (1 + (f.rank - 1) * 0.3)) AS activity
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS rank FROM auth_user WHERE username LIKE 'bench-user-%%') u
    JOIN (SELECT id, row_number() OVER (ORDER BY id) AS rank FROM gateway_modelfacade) f
      ON (u.rank * 7 + f.rank * 13) %% 17 < 2 OR f.rank = 1 + u.rank %% 50
)
INSERT INTO usage_bucket_5min (bucket_start, user_id, facade_id, requests, error_requests, estimated_requests,
                               input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost_nanos)
SELECT b.ts, p.user_id, p.facade_id, r.n, 0, 0, r.n * 900, r.n * 300, 0, r.n * 250, r.n * 285000
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz, interval '5 minutes') AS b(ts)
JOIN pairs p ON random() < p.activity
-- p.user_id keeps the draw per row (an uncorrelated subquery runs once per statement)
CROSS JOIN LATERAL (SELECT 1 + floor(random() * 3 + 0 * p.user_id)::int AS n) r
"""


def timed(function, repeat=7):
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse a filled database")
    args = parser.parse_args()
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        fresh = not (args.keep and exists)
        if fresh:
            conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB}")
    import django

    django.setup()
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from gateway.models import ModelFacade
    from usage import queries, rollups
    from usage.models import RollupState
    from usage.calendar import day_bounds, hour_start

    now = timezone.now()
    if fresh:
        call_command("migrate", verbosity=0)
        User.objects.bulk_create([User(username=f"bench-user-{i:04d}") for i in range(2000)])
        ModelFacade.objects.bulk_create([ModelFacade(name=f"bench-model-{i:02d}", provider="openai",
                                                     base_url="http://127.0.0.1:9/v1", upstream_model=f"m{i}")
                                         for i in range(50)])
        start = day_bounds(now - timedelta(days=97))[0]  # 90 days plus the previous period's week
        # Calibrate the activity scale on one day, then fill every day. The busiest pairs saturate
        # (activity capped at 1), so requests grow less than linearly with the scale: a few
        # proportional corrections on one day land near the target.
        started = time.perf_counter()
        days = (now - start).days + 1
        wanted_per_day = args.requests / 90
        scale = 0.02
        with connection.cursor() as cursor:
            for _ in range(4):
                cursor.execute(FILL, {"scale": scale, "start": start, "end": start + timedelta(days=1) - timedelta(minutes=5)})
                cursor.execute("SELECT coalesce(sum(requests), 0) FROM usage_bucket_5min")
                one_day = int(cursor.fetchone()[0])
                cursor.execute("TRUNCATE usage_bucket_5min")
                scale *= wanted_per_day / max(one_day, 1)
            cursor.execute(FILL, {"scale": scale, "start": start, "end": now})
            cursor.execute("SELECT count(*), sum(requests) FROM usage_bucket_5min WHERE bucket_start >= %s",
                           [now - timedelta(days=90)])
            rows, requests = (int(v or 0) for v in cursor.fetchone())
        print(f"filled {rows:,} 5-minute rows holding {requests:,} requests over the last 90 days "
              f"in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        summary = rollups.roll_up(now=now)
        print(f"rolled up: {summary.line()} ({time.perf_counter() - started:.0f} s)")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    # One day's rollup: move the watermark back a day and roll it forward again.
    yesterday = day_bounds(now - timedelta(days=1))[0]
    RollupState.objects.filter(pk=1).update(watermark=yesterday)
    started = time.perf_counter()
    summary = rollups.roll_up(until=day_bounds(now)[0], now=now)
    one_day_seconds = time.perf_counter() - started
    rollups.roll_up(now=now)
    heavy = User.objects.get(username="bench-user-0000").pk
    typical = User.objects.get(username="bench-user-1000").pk
    print(f"\nbench/dashboard.py — watermark {rollups.watermark():%Y-%m-%d %H:%M} UTC, "
          f"5-minute rows after it: {queries.FiveMinuteUsage.objects.filter(bucket_start__gte=rollups.watermark()).count():,}")
    print(f"rollup of one day ({summary.hours} hours, {summary.days} day): {one_day_seconds:.2f} s (goal <= 10 s)")
    for key in ("7d", "30d", "90d"):
        period = queries.resolve_window(key)
        network = {
            "summary": timed(lambda: queries.summary(period)),
            "series": timed(lambda: queries.daily_series(period)),
            "breakdown": timed(lambda: queries.by_facade(period)),
            "leaderboard": timed(lambda: queries.leaderboard(period, "tokens", limit=100)),
        }
        together = timed(lambda: (queries.summary(period), queries.daily_series(period), queries.by_facade(period),
                                  queries.leaderboard(period, "tokens", limit=100)), repeat=5)
        users = {name: timed(lambda uid=uid: (queries.summary(period, uid), queries.daily_series(period, uid),
                                               queries.by_facade(period, uid)))
                 for name, uid in (("heavy user", heavy), ("typical user", typical))}
        print(f"{key:>4}: network-wide together {together:7.1f} ms (goal <= 100) — "
              + ", ".join(f"{k} {v:.1f}" for k, v in network.items())
              + " | " + ", ".join(f"{k} {v:.1f} ms" for k, v in users.items()) + " (goal <= 20)")


if __name__ == "__main__":
    main()
