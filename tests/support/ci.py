"""What a test does when something it needs is not here (root, a free port, a tool on PATH).

On a developer's machine it skips, loudly, naming what is missing. Under CI=true it fails with the
same words: a CI run that silently skipped the full-disk or the proxy tests would report green for
guarantees nobody checked.
"""

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def cannot_run(missing: str) -> None:
    """Stop the test: `missing` says what is absent and how to provide it."""
    if under_ci():
        pytest.fail(f"cannot run: {missing} (CI=true requires it)", pytrace=False)
    pytest.skip(f"!!! SKIPPED, {missing}")
