"""The mutation check (`make mutate`, issue #31): every guarantee has a test that fails when it breaks.

Each entry of BREAKS is a deliberate break of one guarantee: a file, a text that must occur in it
exactly once, what replaces it, and the tests that must catch it. The check copies the working tree
(the files git tracks or would track, as they are on disk) to a scratch folder, runs every named
test there once unbroken (they must pass, or a "catch" would mean nothing), then applies each break
alone, runs its tests on PostgreSQL, and puts the file back. A break is caught when pytest reports a
failing test; it is missed when they all pass. The check fails (exit 1) when any break is missed,
when a break's text is no longer found exactly once in its file (the code moved: update the entry,
never delete it), or when a run errs (a test it names is gone, nothing was collected). The checkout
itself is never changed.

    .venv/bin/python tests/mutate.py            # every break
    .venv/bin/python tests/mutate.py -k budget  # the breaks whose name contains "budget"
    .venv/bin/python tests/mutate.py --list     # the breaks and their tests
    .venv/bin/python tests/mutate.py --every-test  # run all of a break's tests, and say which caught it

PostgreSQL comes from MUTATE_DATABASE_URL, else 127.0.0.1:5432 as user postgres; the database is
named codevector_mutate_<pid> (pytest-django's test_<name>, created once, kept between the runs of
one check with --reuse-db, dropped at the end).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Break:
    name: str
    path: str  # relative to the repository
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids (or files), run from the copy's root


# The ledger's COMMIT held by a proxy: whole and streamed answers, OpenAI and Anthropic, in one test.
COUNTED_BEFORE_THE_ANSWER = ("tests/test_counted_before_answer.py::"
                             "test_no_client_has_the_end_of_its_answer_before_the_ledgers_commit_is_released")

BREAKS = (
    Break(
        "the key dropped from a delta (the pipeline builds its UsageDelta without the caller's key)",
        "gateway/pipeline.py",
        "user_id=key.user_id, key_id=key.key_id, facade_id=facade.facade_id",
        "user_id=key.user_id, key_id=None, facade_id=facade.facade_id",
        ("tests/test_attribution.py::test_each_request_through_the_gateway_is_recorded_against_the_key_that_made_it",),
    ),
    Break(
        "the key dropped from a delta's disk format (buffer records and log lines)",
        "usage/ledger/delta.py",
        '        data = asdict(self)\n        data["at"] = self.at.isoformat()\n',
        '        data = asdict(self)\n        del data["key_id"]\n        data["at"] = self.at.isoformat()\n',
        ("tests/test_attribution.py::test_buffered_deltas_keep_their_key_through_the_disk_format_and_the_drain",
         "tests/test_attribution.py::test_a_from_log_replay_and_the_rollups_keep_each_key"),
    ),
    Break(
        "a counter left out of the UPSERT (cost_nanos not added to a bucket row that exists)",
        "usage/sql.py",
        'updates = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in COUNTERS)',
        'updates = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in COUNTERS if c != "cost_nanos")',
        ("tests/test_ledger.py::test_it_adds_many_deltas_exactly_per_bucket_user_and_facade",
         "tests/test_ledger.py::test_the_upsert_statement_names_every_counter"),
    ),
    Break(
        "the delta applied twice on replay (the applied-id skip dropped)",
        "usage/degraded/drain.py",
        "fresh = [d for d in unique if d.id in fresh_ids and d.id not in landed]",
        "fresh = [d for d in unique if d.id not in landed]",
        ("tests/test_drain.py::test_buffered_deltas_are_replayed_once_and_a_second_run_adds_nothing",
         "tests/test_drain.py::test_lost_deltas_logged_as_one_line_each_are_replayed_from_the_log_once"),
    ),
    Break(
        "reasoning tokens ignored: the Responses API (output_tokens_details.reasoning_tokens)",
        "gateway/providers/responses.py",
        'reasoning = min(int_field(usage, "output_tokens_details", "reasoning_tokens"), output)',
        "reasoning = 0",
        ("tests/test_providers_responses.py::test_a_whole_response_reports_cached_input_and_reasoning_output",
         "tests/test_gateway_responses.py::test_a_response_is_proxied_renamed_and_counted_with_its_reasoning_tokens"),
    ),
    Break(
        "reasoning tokens ignored: Chat Completions (completion_tokens_details.reasoning_tokens)",
        "gateway/providers/openai.py",
        'reasoning = min(int_field(usage, "completion_tokens_details", "reasoning_tokens"), completion)',
        "reasoning = 0",
        ("tests/test_providers_responses.py::test_chat_completions_usage_reads_cache_writes_and_reasoning",
         "tests/test_gateway_responses.py::test_chat_completions_read_cache_writes_and_reasoning_from_the_details"),
    ),
    Break(
        "reasoning tokens ignored: Anthropic (output_tokens_details.thinking_tokens)",
        "gateway/providers/anthropic.py",
        'reasoning_tokens=min(fields.get("thinking_tokens", 0), output)',
        "reasoning_tokens=0",
        ("tests/test_billing.py::test_anthropic_5_minute_and_1_hour_writes_web_searches_and_thinking_in_one_answer",),
    ),
    Break(
        "the cache-write price used for cached reads",
        "usage/pricing.py",
        "+ cached_input_tokens * p.cached_input_micros",
        "+ cached_input_tokens * p.cache_write_micros",
        ("tests/test_pricing.py::test_it_prices_the_anthropic_fixture_exactly",),
    ),
    Break(
        "the budget check skipped",
        "gateway/pipeline.py",
        "        if route.billed:\n            self.check_budgets(call)\n",
        "        if route.billed:\n            pass\n",
        ("tests/test_gateway_budgets.py::test_at_the_cap_requests_fail_with_429_budget_exceeded_in_each_format",),
    ),
    Break(
        "the commit moved after the answer: a whole answer sent before its delta is recorded",
        "gateway/pipeline.py",
        "        await self.record(call, usage)\n"
        "        await call.respond(response.status, data, upstream.response_headers(response.raw_headers), "
        "content_type)\n",
        "        await call.respond(response.status, data, upstream.response_headers(response.raw_headers), "
        "content_type)\n"
        "        await self.record(call, usage)\n",
        (COUNTED_BEFORE_THE_ANSWER,),
    ),
    Break(
        "the commit moved after the answer: a stream's last event sent before its delta is recorded",
        "gateway/pipeline.py",
        "                    if (state.done or state.error) and not recorded:\n"
        "                        # The delta is stored before the last event goes out.\n"
        "                        await self.record(call, state.usage(), error=state.error)\n"
        "                        recorded = True\n"
        "                    if out and not disconnected.is_set():\n"
        '                        await call.send({"type": "http.response.body", "body": out, "more_body": True})\n',
        "                    if out and not disconnected.is_set():\n"
        '                        await call.send({"type": "http.response.body", "body": out, "more_body": True})\n'
        "                    if (state.done or state.error) and not recorded:\n"
        "                        await self.record(call, state.usage(), error=state.error)\n"
        "                        recorded = True\n",
        (COUNTED_BEFORE_THE_ANSWER,),
    ),
)


def applies(entry: Break, root: Path = ROOT) -> str | None:
    """None if the break's text occurs exactly once in its file, else why not."""
    path = root / entry.path
    if not path.is_file():
        return f"{entry.path} does not exist"
    found = path.read_text().count(entry.old)
    return None if found == 1 else f"its text occurs {found} times in {entry.path} (exactly once expected)"


def working_tree_files() -> list[str]:
    """The files git tracks or would track (not ignored), as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def copy_tree(target: Path) -> None:
    for name in working_tree_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination)


def database_url() -> str:
    base = os.environ.get("MUTATE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
    if base.count("/") > 2:  # a URL naming a database: keep its server only
        base = base.rsplit("/", 1)[0]
    return f"{base}/codevector_mutate_{os.getpid()}"


def drop_test_databases(url: str) -> None:
    import psycopg
    from psycopg import sql

    server, name = url.rsplit("/", 1)
    with psycopg.connect(server + "/postgres", connect_timeout=5, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                            ("test_" + name, "test_" + name.replace("_", r"\_") + r"\_gw%")).fetchall()
        for (database,) in rows:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


class Runner:
    def __init__(self, copy: Path, url: str, timeout: float):
        self.copy, self.timeout, self.runs = copy, timeout, 0
        self.env = {**os.environ, "DATABASE_URL": url, "PYTHONDONTWRITEBYTECODE": "1",
                    "USAGE_BUFFER_DIR": str(copy / "var" / "test" / "usage-buffer"),
                    "SECRET_KEY": os.environ.get("SECRET_KEY") or "codevector-mutate-not-a-production-key"}
        self.env.pop("TEST_DATABASE_URL", None)
        (copy / "var" / "test" / "usage-buffer").mkdir(parents=True, exist_ok=True)
        (copy / "var" / "mutate").mkdir(parents=True, exist_ok=True)

    def pytest(self, tests: tuple[str, ...], label: str, stop_at_first_failure: bool) -> tuple[int, Path, float]:
        """pytest's exit status, its output file and the seconds it took."""
        self.runs += 1
        log = self.copy / "var" / "mutate" / f"{self.runs:02d}-{label}.log"
        # The first run creates the test database; the later ones reuse it (pytest-django's --reuse-db).
        # Hypothesis' and Schemathesis' plugins take seconds to import, and no test named here needs them.
        args = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                "-p", "no:schemathesis",
                "--reuse-db" if self.runs > 1 else "--create-db", *(["-x"] if stop_at_first_failure else []), *tests]
        started = time.monotonic()
        with open(log, "wb") as out:
            try:
                status = subprocess.run(args, cwd=self.copy, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        timeout=self.timeout).returncode
            except subprocess.TimeoutExpired:
                status = -1
        return status, log, time.monotonic() - started


def failed_tests(log: Path, tests: tuple[str, ...]) -> list[str]:
    """Those of `tests` (node ids or their prefixes) that pytest's summary (-rf) reports FAILED."""
    failed = [line.split()[1] for line in log.read_text(errors="replace").splitlines() if line.startswith("FAILED ")]
    return [test for test in tests if any(node == test or node.startswith(test + "[") or node.startswith(test + "::")
                                          for node in failed)]


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join("      " + line for line in path.read_text(errors="replace").splitlines()[-lines:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="keyword", help="only the breaks whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the breaks and their tests, run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its var/mutate/ holds the logs)")
    parser.add_argument("--every-test", action="store_true",
                        help="run every test of a break (not only up to the first failure) and name those that fail")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a pytest run may take (default 600)")
    options = parser.parse_args(argv)

    breaks = [b for b in BREAKS if not options.keyword or options.keyword.lower() in b.name.lower()]
    if not breaks:
        print(f"no break's name contains {options.keyword!r}")
        return 2
    if options.list:
        for number, entry in enumerate(breaks, 1):
            print(f"{number:2d}. {entry.name}\n    {entry.path}\n" + "".join(f"    - {t}\n" for t in entry.tests))
        return 0

    stale = {entry.name: why for entry in breaks if (why := applies(entry)) is not None}
    live = [entry for entry in breaks if entry.name not in stale]
    url = database_url()
    copy = Path(tempfile.mkdtemp(prefix="codevector-mutate-"))
    results: list[tuple[Break, str]] = [(entry, "NO LONGER APPLIES: " + stale[entry.name]) for entry in breaks
                                        if entry.name in stale]
    try:
        copy_tree(copy)
        check = subprocess.run([sys.executable, "-c", "import gateway, usage; print(gateway.__file__)"], cwd=copy,
                               capture_output=True, text=True)
        if not check.stdout.startswith(str(copy)):  # the copy's code must be what the tests import
            print(f"the scratch copy does not import its own code: {check.stdout or check.stderr}")
            return 2
        runner = Runner(copy, url, options.timeout)
        tests = tuple(dict.fromkeys(t for entry in live for t in entry.tests))
        print(f"Mutation check: {len(breaks)} break(s), scratch copy {copy}, database test_{url.rsplit('/', 1)[1]}")
        if tests:
            status, log, seconds = runner.pytest(tests, "unbroken", stop_at_first_failure=False)
            print(f"   unbroken: {len(tests)} test(s) {'pass' if status == 0 else 'FAIL'} ({seconds:.0f} s)")
            if status != 0:
                print("The tests must pass on the unbroken code before a failure can mean a catch:\n" + tail(log))
                return 2
        for entry in live:
            file = copy / entry.path
            original = file.read_text()
            file.write_text(original.replace(entry.old, entry.new, 1))
            try:
                label = "".join(c if c.isalnum() else "-" for c in entry.name.split(" (")[0].split(":")[0])[:40]
                status, log, seconds = runner.pytest(entry.tests, label, stop_at_first_failure=not options.every_test)
            finally:
                file.write_text(original)
            outcome = {0: "MISSED", 1: "caught"}.get(status, f"ERROR (pytest exit {status}; see {log})")
            results.append((entry, outcome))
            print(f"{outcome:>11}: {entry.name} ({seconds:.0f} s)")
            if status == 1 and options.every_test:
                caught_by = failed_tests(log, entry.tests)
                for test in entry.tests:
                    print(f"{'':>15}{'failed' if test in caught_by else 'PASSED'}: {test}")
            if status != 1:
                print(tail(log))
    finally:
        try:
            drop_test_databases(url)
        except Exception as exc:  # noqa: BLE001 (reported, not hidden: the database is left behind)
            print(f"could not drop the test database of {url}: {exc}")
        if not options.keep:
            shutil.rmtree(copy, ignore_errors=True)

    print()
    for entry, outcome in results:
        if outcome != "caught":
            print(f"{outcome}: {entry.name}")
    caught = sum(outcome == "caught" for _, outcome in results)
    print(f"{caught} of {len(breaks)} break(s) caught")
    return 0 if caught == len(breaks) else 1


if __name__ == "__main__":
    sys.exit(main())
