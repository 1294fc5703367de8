"""A user's clone has nothing beside it: the tests that read wire fixtures pass in a fresh clone of the
repository in an empty folder (no shared folder beside it), run with the clone's own code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci import cannot_run

ROOT = Path(__file__).resolve().parent.parent


def wire_tests() -> list[str]:
    """Every test module that reads the wire fixtures, found by scanning (issue #31, item 8: a
    hand-kept list had missed test_providers_responses.py)."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
                  if path.name != Path(__file__).name and "tests.support.fixtures" in path.read_text())


def test_the_scan_finds_every_module_that_reads_the_fixtures():
    assert {"tests/test_providers_openai.py", "tests/test_providers_anthropic.py", "tests/test_providers_responses.py",
            "tests/test_mock_upstream.py", "tests/test_billing.py"} <= set(wire_tests())


def test_the_wire_fixture_tests_pass_in_a_fresh_clone_with_nothing_beside_it(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        cannot_run("git and a repository to clone: run the tests from a git checkout with git on PATH")
    folder = tmp_path / "empty"
    folder.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(folder / "fresh")], check=True)
    clone = folder / "fresh"
    assert sorted(p.name for p in folder.iterdir()) == ["fresh"]
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "SQLITE_TEST_NAME": str(tmp_path / "test.sqlite3"),
           "USAGE_BUFFER_DIR": str(tmp_path / "buffer"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    # The clone's own modules, not this checkout's: `python -m pytest` puts the clone first on sys.path.
    probe = subprocess.run([sys.executable, "-c", "import gateway, tests.support.fixtures as f; "
                            "print(gateway.__file__); print(f.FIXTURES)"],
                           cwd=clone, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == [str(clone / "gateway" / "__init__.py"), str(clone / "tests" / "support" / "wire")]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *wire_tests()],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout and "error" not in result.stdout.lower()
