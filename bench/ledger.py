"""Ledger throughput on PostgreSQL: recorded deltas per second with 1 and 8 concurrent writer
processes, next to pgbench's TPS for a comparable single-row UPSERT with 1 and 8 clients.

Run: make bench   (or .venv/bin/python bench/ledger.py [--deltas N] [--seconds S])
Uses the server from BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432) and a
database of its own, codevector_bench_ledger, recreated on every run.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
DB = "codevector_bench_ledger"
URL = f"{SERVER}/{DB}"
WRITER = ROOT / "tests" / "support" / "ledger_writer_process.py"


def sh(*args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs).stdout


def prepare() -> tuple[str, str]:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    env = {**os.environ, "DATABASE_URL": URL}
    sh(sys.executable, str(ROOT / "manage.py"), "migrate", "-v0", env=env, cwd=ROOT)
    script = (
        "import django; django.setup()\n"
        "from django.contrib.auth.models import User\n"
        "from gateway.models import ModelFacade\n"
        "u = [User.objects.create_user(f'bench{i}').pk for i in range(4)]\n"
        "f = [ModelFacade.objects.create(name=f'bench-{i}', provider='openai', base_url='http://127.0.0.1:9/v1').pk"
        " for i in range(3)]\n"
        "print(','.join(map(str, u)), ','.join(map(str, f)))\n"
    )
    users, facades = sh(sys.executable, "-c", script, env={**env, "DJANGO_SETTINGS_MODULE": "codevector.settings"},
                        cwd=ROOT).split()
    return users, facades


def ledger_rate(writers: int, per_writer: int, users: str, facades: str, sync: bool) -> float:
    env = {**os.environ, "DATABASE_URL": URL}
    start_at = time.time() + 3.0  # after every process has started Django
    procs = [
        subprocess.Popen([sys.executable, str(WRITER), str(seed), str(per_writer), users, facades,
                          "--start-at", f"{start_at}", *(["--sync"] if sync else [])],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for seed in range(writers)
    ]
    ends = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0
        ends.append(float(out.split()[-1]))
    return writers * per_writer / (max(ends) - start_at)


def pgbench_tps(clients: int, seconds: int) -> float:
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_counter (k int PRIMARY KEY, v bigint NOT NULL)")
    script = ROOT / "var" / "bench_upsert.sql"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        "\\set k random(1, 4)\n"
        "INSERT INTO bench_counter (k, v) VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET v = bench_counter.v + EXCLUDED.v;\n"
    )
    out = sh("pgbench", "-n", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), URL)
    line = next(l for l in out.splitlines() if l.startswith("tps"))
    return float(line.split("=")[1].split()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=4000, help="deltas per writer process")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench duration")
    args = parser.parse_args()
    users, facades = prepare()
    print(f"PostgreSQL {SERVER}, database {DB}; {args.deltas} deltas per writer")
    rows = []
    for writers in (1, 8):
        sync = ledger_rate(writers, args.deltas, users, facades, sync=True)
        grouped = ledger_rate(writers, args.deltas, users, facades, sync=False)
        tps = pgbench_tps(writers, args.seconds)
        rows.append((writers, sync, grouped, tps))
    print(f"{'writers':>7} | {'ledger, commit per delta':>24} | {'ledger, group commit (32 in flight)':>35} | {'pgbench UPSERT tps':>18}")
    for writers, sync, grouped, tps in rows:
        print(f"{writers:>7} | {sync:>18,.0f} d/s | {grouped:>29,.0f} d/s | {tps:>18,.0f}")
    eight = rows[-1]
    print(f"goal: ledger at 8 writers >= 50% of pgbench at 8 clients -> "
          f"commit per delta {eight[1] / eight[3]:.0%}, group commit {eight[2] / eight[3]:.0%}")


if __name__ == "__main__":
    main()
