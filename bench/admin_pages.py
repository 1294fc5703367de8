"""Server time of the usage pages over bench/dashboard.py's 10-million-request history.

Run bench/dashboard.py first (it fills codevector_bench_dash), then:
.venv/bin/python bench/admin_pages.py
Goals: /admin/usage/?period=90d at most 150 ms p50; a user's page at most 50 ms p50.
"""

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
os.environ["DATABASE_URL"] = f"{SERVER}/codevector_bench_dash"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")
os.environ.setdefault("USAGE_BUFFER_DIR", str(ROOT / "var" / "bench-buffer"))
os.environ.setdefault("ALLOWED_HOSTS", "testserver")


def median_ms(client, url, repeat=9):
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(samples)


def main():
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.test import Client

    admin, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(admin)
    heavy = User.objects.get(username="bench-user-0000").pk
    print(f"bench/admin_pages.py on {platform.node()}: {os.cpu_count()} CPU core(s), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; server time, median of 9 after one warm-up request")
    rows = []
    for period in ("7d", "30d", "90d"):
        pages = [(f"{period} /admin/usage/", f"/admin/usage/?period={period}", 150 if period == "90d" else None),
                 (f"{period} heavy user's page", f"/admin/auth/user/{heavy}/usage/?period={period}", 50),
                 (f"{period} leaderboard", f"/admin/usage/leaderboard/?period={period}", None)]
        for label, url, goal in pages:
            client.get(url)  # warm-up
            rows.append((label, median_ms(client, url), goal))
    print(f"\n{'page':<28} {'median ms':>10} {'goal ms':>8}  result")
    for label, ms, goal in rows:
        print(f"{label:<28} {ms:>10.1f} {goal if goal else '-':>8}  {('PASS' if ms <= goal else 'MISS') if goal else ''}")

if __name__ == "__main__":
    main()
