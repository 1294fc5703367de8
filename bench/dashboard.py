"""Read times over a 90-day history equal to 10 million requests (2,000 users with 1-3 API keys
each, the keys spread over 50 projects, 50 facades, a few heavy users and models), filled in SQL with generate_series and rolled up,
with the current hour's 5-minute rows un-rolled; plus the time to roll up one day. Reads are timed
as of now and as of the same time on last month's last day (the most day rows); prints one table
with each goal and PASS/MISS, and the machine it ran on.

Run: .venv/bin/python bench/dashboard.py [--requests 10000000] [--keep] [--repeat 9]
Uses the database codevector_bench_dash on BENCH_DATABASE_URL's server (recreated unless --keep
finds it filled already). Goals: network-wide 90-day summary + series + breakdown + per-project
table + leaderboard together at most 100 ms p50; one user's, and one project's, summary + series +
by-model + by-key at most 20 ms p50; one day's rollup at most 10 s. The filled database is ~1.9 GB: drop it when done
(DROP DATABASE codevector_bench_dash); a fresh run recreates it in ~6 minutes.
"""

import argparse
import os
import platform
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

# Each bench user gets 1-3 API keys (unique prefix and digest; not revoked); the fill spreads each
# user's rows across them (one key per 5-minute row, so row counts match the keyless fill of before).
# Each key is in one of the bench's projects (a user's keys in different ones), and its user is a
# member of it. Run without parameters: a single % is the modulo operator here.
PROJECTS = 50
KEYS = f"""
INSERT INTO gateway_apikey (user_id, project_id, name, prefix, digest, created_at, revoked_at, expires_at,
                            last_used_at)
SELECT u.id, p.ids[1 + (u.id * 3 + k) % {PROJECTS}], 'bench key ' || k, 'bnch' || lpad(u.id::text, 6, '0') || k,
       md5('bench-key-' || u.id || '-' || k) || md5('bench-key-2-' || u.id || '-' || k), now(), NULL, NULL, NULL
FROM auth_user u
CROSS JOIN LATERAL generate_series(1, 1 + u.id % 3) AS k
CROSS JOIN (SELECT array_agg(id ORDER BY id) AS ids FROM gateway_project WHERE name LIKE 'bench-project-%') p
WHERE u.username LIKE 'bench-user-%'
"""
MEMBERS = """
INSERT INTO gateway_projectmember (project_id, user_id, role)
SELECT DISTINCT project_id, user_id, 'member' FROM gateway_apikey WHERE prefix LIKE 'bnch%'
"""

FILL = """
WITH user_keys AS (
    SELECT user_id, array_agg(id ORDER BY id) AS ids FROM gateway_apikey WHERE prefix LIKE 'bnch%%' GROUP BY user_id
), pairs AS (
    SELECT u.id AS user_id, f.id AS facade_id, k.ids AS key_ids,
           -- a few heavy users and models: activity falls off with the user's and the facade's rank
           least(1.0, %(scale)s / (1 + (u.rank - 1) * 0.05) / (1 + (f.rank - 1) * 0.3)) AS activity
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS rank FROM auth_user WHERE username LIKE 'bench-user-%%') u
    JOIN (SELECT id, row_number() OVER (ORDER BY id) AS rank FROM gateway_modelfacade) f
      ON (u.rank * 7 + f.rank * 13) %% 17 < 2 OR f.rank = 1 + u.rank %% 50
    JOIN user_keys k ON k.user_id = u.id
)
INSERT INTO usage_bucket_5min (bucket_start, user_id, key_id, facade_id, requests, error_requests, estimated_requests,
                               input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost_nanos)
SELECT b.ts, p.user_id, p.key_ids[r.k], p.facade_id, r.n, 0, 0, r.n * 900, r.n * 300, 0, r.n * 250, r.n * 285000
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz, interval '5 minutes') AS b(ts)
JOIN pairs p ON random() < p.activity
-- p.user_id keeps the draw per row (an uncorrelated subquery runs once per statement)
CROSS JOIN LATERAL (SELECT 1 + floor(random() * 3 + 0 * p.user_id)::int AS n,
                           1 + floor(random() * cardinality(p.key_ids))::int AS k) r
"""

# Add `step` (1 or -1) requests, with their tokens and cost, to `rows` random rows of the window
# (-1 only where a row keeps at least one request).
ADJUST = """
UPDATE usage_bucket_5min SET requests = requests + %(step)s, input_tokens = input_tokens + %(step)s * 900,
       cached_input_tokens = cached_input_tokens + %(step)s * 300, output_tokens = output_tokens + %(step)s * 250,
       cost_nanos = cost_nanos + %(step)s * 285000
WHERE id IN (SELECT id FROM usage_bucket_5min WHERE bucket_start >= %(window)s AND requests + %(step)s >= 1
             ORDER BY random() LIMIT %(rows)s)
"""


def timed(function, repeat=9):
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
    parser.add_argument("--repeat", type=int, default=9, help="runs per median")
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

    from gateway.models import ModelFacade, Project
    from usage.reads import queries
    from usage import rollups
    from usage.models import FiveMinuteUsage, RollupState
    from usage.calendar import day_bounds, local_date, local_midnight, zone

    now = timezone.now()
    if fresh:
        call_command("migrate", verbosity=0)
        User.objects.bulk_create([User(username=f"bench-user-{i:04d}") for i in range(2000)])
        ModelFacade.objects.bulk_create([ModelFacade(name=f"bench-model-{i:02d}", provider="openai",
                                                     base_url="http://127.0.0.1:9/v1", upstream_model=f"m{i}")
                                         for i in range(50)])
        Project.objects.bulk_create([Project(name=f"bench-project-{i:02d}")
                                     for i in range(PROJECTS)])
        start = day_bounds(now - timedelta(days=97))[0]  # 90 days plus the previous period's week
        # Calibrate the activity scale on one day, then fill every day. The busiest pairs saturate
        # (activity capped at 1), so requests grow less than linearly with the scale and each
        # proportional correction falls a little short: correct until one day is within 0.5 % of
        # its share (four fixed corrections landed 7 % short of 10 million).
        started = time.perf_counter()
        days = (now - start).days + 1
        wanted_per_day = args.requests / 90
        scale = 0.02
        with connection.cursor() as cursor:
            cursor.execute(KEYS)
            cursor.execute(MEMBERS)
            for _ in range(20):
                cursor.execute(FILL, {"scale": scale, "start": start, "end": start + timedelta(days=1) - timedelta(minutes=5)})
                cursor.execute("SELECT coalesce(sum(requests), 0) FROM usage_bucket_5min")
                one_day = int(cursor.fetchone()[0])
                cursor.execute("TRUNCATE usage_bucket_5min")
                if abs(one_day - wanted_per_day) <= wanted_per_day * 0.005:
                    break
                scale *= wanted_per_day / max(one_day, 1)
            cursor.execute(FILL, {"scale": scale, "start": start, "end": now})
            window = now - timedelta(days=90)
            cursor.execute("SELECT count(*), sum(requests) FROM usage_bucket_5min WHERE bucket_start >= %s", [window])
            rows, requests = (int(v or 0) for v in cursor.fetchone())
            # The calibration day is not an average day of the whole fill (the random draws; 8.99 and
            # 9.25 million for 10 in two runs): one request more, or less, in as many rows of the
            # window as the target is away, so the 90 days hold exactly --requests.
            missing = args.requests - requests
            if missing:
                step = 1 if missing > 0 else -1
                cursor.execute(ADJUST, {"step": step, "window": window, "rows": abs(missing)})
                requests += step * cursor.rowcount
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
    # The busiest project and a middling one (by requests over the last 90 days).
    projects = sorted(queries.by_project(queries.resolve_window("90d", now)), key=lambda r: -r.totals.requests)
    heavy_project, typical_project = projects[0].project_id, projects[len(projects) // 2].project_id
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version')")
        server_version = cursor.fetchone()[0]
    print(f"\nbench/dashboard.py on {platform.node()}: {os.cpu_count()} CPU core(s) "
          f"({platform.processor() or platform.machine()}), load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
          f"PostgreSQL {server_version}, Python {platform.python_version()}")
    print(f"watermark {rollups.watermark():%Y-%m-%d %H:%M} UTC, 5-minute rows after it: "
          f"{FiveMinuteUsage.objects.filter(bucket_start__gte=rollups.watermark()).count():,}; "
          f"times are medians of {args.repeat} runs (parts: of {args.repeat}) after one warm-up run")
    table = [("rollup of one day", f"{summary.hours} hours, {summary.days} day", one_day_seconds * 1000, 10_000)]
    # Where `now` falls in the month decides how much is read from month rows and how much from day
    # rows: besides today, read as of the same time on the last day of last month (the most day
    # rows: a 90-day window then holds ~58 whole days outside whole months). Every row is exact:
    # the windows end before the watermark, so they are read from the rolled levels and 5-minute rows.
    tz = zone()
    month_last_day = local_midnight(local_date(now, tz).replace(day=1) - timedelta(days=1), tz)
    as_of = [("", now), ("end-of-month ", month_last_day + (now - day_bounds(now)[0]))]
    for (label, at), key in [(a, k) for a in as_of for k in ("7d", "30d", "90d")]:
        period = queries.resolve_window(key, at)
        key = label + key
        # The reads of each page (usage.web.dashboard.panel): queries.page_reads, one round trip for the
        # summary and the per-model table (one statement: with the per-key table on a user's and a
        # project's page) and the series; the network page adds by project and the leaderboard.
        parts = {
            "summary+by model+series": lambda: queries.page_reads(period),
            "by project": lambda: queries.by_project(period),
            "leaderboard": lambda: queries.leaderboard(period, "tokens", limit=100),
        }
        network = lambda: [part() for part in parts.values()]  # noqa: E731
        network()  # warm-up
        detail = ", ".join(f"{name} {timed(part, args.repeat):.1f}" for name, part in parts.items())
        table.append((f"{key} network page", detail, timed(network, args.repeat), 100))
        for name, uid in (("heavy user", heavy), ("typical user", typical)):
            user_parts = {
                "page (one round trip)": lambda uid=uid: queries.page_reads(period, uid, with_keys=True),
            }
            together = lambda user_parts=user_parts: [part() for part in user_parts.values()]  # noqa: E731
            together()  # warm-up
            detail = ", ".join(f"{n} {timed(part, args.repeat):.1f}" for n, part in user_parts.items())
            table.append((f"{key} {name}", detail, timed(together, args.repeat), 20))
        for name, pid in (("heavy project", heavy_project), ("typical project", typical_project)):
            project_parts = {
                "page (one round trip)": lambda pid=pid: queries.page_reads(period, project_id=pid, with_keys=True),
            }
            together = lambda project_parts=project_parts: [part() for part in project_parts.values()]  # noqa: E731
            together()  # warm-up
            detail = ", ".join(f"{n} {timed(part, args.repeat):.1f}" for n, part in project_parts.items())
            table.append((f"{key} {name}", detail, timed(together, args.repeat), 20))
    table += openai_reads(now, args.repeat)
    print(f"\nas of now ({now:%Y-%m-%d %H:%M} UTC) and end-of-month ({as_of[1][1]:%Y-%m-%d %H:%M} UTC)")
    print(f"\n{'read':<46} {'median ms':>10} {'goal ms':>8}  result  parts (ms)")
    for label, detail, ms, goal in table:
        verdict = "—" if goal is None else "PASS" if ms <= goal else "MISS"
        print(f"{label:<46} {ms:>10.1f} {'—' if goal is None else f'{goal:,}':>8}  {verdict:<6}  {detail}")
    goals = [(ms, goal) for _, _, ms, goal in table if goal is not None]
    misses = sum(ms > goal for ms, goal in goals)
    print(f"\n{len(goals) - misses} of {len(goals)} within their goals"
          + (f"; {misses} MISS" if misses else ""))


def openai_reads(now, repeat: int) -> list[tuple]:
    """The OpenAI-shaped organization usage and costs (usage.web.openai_usage), network-wide, as a
    client gets them through Django (parsed, read through the same engine as the pages, rendered).
    The network page's goal for the answers of a page's size; none for the answers of 1-2 MB (one
    result per user, or per model and line item, every day of a month), whose time is mostly JSON."""
    import json

    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    from gateway.models import ApiKey

    reader, _ = User.objects.get_or_create(username="bench-openai-reader",
                                           defaults={"is_staff": True, "is_superuser": True})
    ApiKey.objects.filter(user=reader).delete()
    _, raw = ApiKey.objects.create_key(reader, name="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_HOST="127.0.0.1")
    month, week = int(now.timestamp()) - 31 * 86400, int(now.timestamp()) - 7 * 86400
    reads = [
        ("completions, 31 days by model", f"usage/completions?start_time={month}&bucket_width=1d&limit=31&group_by=model", 100),
        ("completions, 168 hours", f"usage/completions?start_time={week}&bucket_width=1h&limit=168", 100),
        ("costs, 31 days by project", f"costs?start_time={month}&bucket_width=1d&limit=31&group_by=project_id", 100),
        ("completions, 31 days by user", f"usage/completions?start_time={month}&bucket_width=1d&limit=31&group_by=user_id", None),
        ("costs, 31 days by line item", f"costs?start_time={month}&bucket_width=1d&limit=31&group_by=line_item", None),
    ]
    rows = []
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}):
        for label, path, goal in reads:
            def get(path=path):
                answer = client.get(f"/v1/organization/{path}")
                assert answer.status_code == 200, answer.content[:300]
                return answer
            results = sum(len(bucket["results"]) for bucket in json.loads(get().content)["data"])  # warm-up
            rows.append((f"OpenAI-shaped {label}", f"{results:,} results", timed(get, repeat), goal))
    ApiKey.objects.filter(user=reader).delete()
    return rows

if __name__ == "__main__":
    main()
