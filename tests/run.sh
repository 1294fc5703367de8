#!/usr/bin/env bash
# The README's test command (`make test`) runs this: the whole suite on PostgreSQL, then on SQLite.
# PostgreSQL comes from TEST_DATABASE_URL, else 127.0.0.1:5432 if it answers. With CI=true it is
# required; otherwise its absence skips that run with a loud line.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export USAGE_BUFFER_DIR="${USAGE_BUFFER_DIR:-$PWD/var/test/usage-buffer}"
mkdir -p var/test "$USAGE_BUFFER_DIR"
# The tests' own key (the servers they start refuse to run without one); a caller's wins.
export SECRET_KEY="${SECRET_KEY:-codevector-tests-$(date +%s)-$$-not-a-production-key}"

# A name of this run's own, so test databases (test_<name>_gwN) never collide with another run
# on the same server (a developer's and CI's, or two checkouts).
pg_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/codevector_run$$}"
workers="${TEST_WORKERS:-2}"
status=0

# pytest-django names its databases test_<name> and test_<name>_gwN (one per xdist worker). Drop
# them whatever way this script ends (a failure, Ctrl-C, a kill by TERM): a test run that failed must
# not leave databases behind on a shared server.
drop_test_databases() {
  "$PY" - "$pg_url" <<'PY' 2>/dev/null || true
import sys
import psycopg
from psycopg import sql
server, name = sys.argv[1].rsplit("/", 1)
name = name.split("?", 1)[0]
with psycopg.connect(server + "/postgres", connect_timeout=3, autocommit=True) as conn:
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                        ("test_" + name, "test_" + name.replace("_", r"\_") + r"\_gw%")).fetchall()
    for (database,) in rows:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        print(f"=== dropped the test database {database}")
PY
}
trap drop_test_databases EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_suite() {  # name, database url, extra pytest args...
  local name=$1 url=$2
  shift 2
  echo "=== $name: pytest on $url"
  # --dist loadgroup: the fault tests share one xdist group (they start clusters and gunicorns).
  DATABASE_URL="$url" CODEVECTOR_TEST_DB="$name" "$PY" -m pytest -n "$workers" --dist loadgroup "$@"
  local rc=$?
  # pytest's 5 means "no tests collected": never a success here.
  if [ $rc -ne 0 ]; then
    echo "=== $name: FAILED (pytest exit $rc)"
    status=1
  fi
}

if "$PY" -c "import sys, psycopg; psycopg.connect(sys.argv[1].rsplit('/', 1)[0] + '/postgres', connect_timeout=3).close()" "$pg_url" 2>/dev/null; then
  run_suite postgresql "$pg_url" "$@"
elif [ "${CI:-}" = "true" ]; then
  echo "!!! PostgreSQL at $pg_url does not answer, and CI=true requires it. FAILING." >&2
  status=1
else
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! PostgreSQL at $pg_url does not answer: SKIPPING the PostgreSQL run.       " >&2
  echo "!!! Set TEST_DATABASE_URL or start PostgreSQL to run it.                      " >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
fi

# Tests that touch no database (marked dbless) already ran in the PostgreSQL pass.
run_suite sqlite "sqlite:///$PWD/var/test/codevector.sqlite3" -m "not postgres_only and not dbless" "$@"

exit $status
