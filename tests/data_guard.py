"""CI guard: in CI a test may not skip because its data is missing; such a skip becomes a failure.

Active when `CI` is set to anything but `0`/`false`/empty (CI services set `CI=true`; `.ci/run`
sets it too) or when `ADAMSHAP_DATA_GUARD=1`. A skip counts as "missing data" when its reason
matches `DATA_SKIP`: the `MISSING_DATA` prefix that tests/fixtures.py writes, or wording such as
"not found" / "not installed" that a hand-written data skip would use. Other skips (no CUDA
device, a race a test could not provoke) pass through. Loaded by tests/conftest.py; a test
checks it in a child pytest (`-p tests.data_guard`).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

MISSING_DATA = "missing test data"
DATA_SKIP = re.compile(
    rf"{MISSING_DATA}|not found|not installed|not available|no such file|does not exist",
    re.IGNORECASE,
)


def guard_active() -> bool:
    """True when skips for missing data must fail (CI, or ADAMSHAP_DATA_GUARD=1)."""
    if os.environ.get("ADAMSHAP_DATA_GUARD", "").strip() == "1":
        return True
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason(report: Any) -> str:
    """The reason text of a skipped test report ('' when there is none)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def is_data_skip(reason: str) -> bool:
    """True when a skip reason says the test's data is missing."""
    return bool(DATA_SKIP.search(reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    """Turn a skip for missing data into a failure while the guard is active."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and guard_active():
        reason = skip_reason(report)
        if is_data_skip(reason):
            report.outcome = "failed"
            report.longrepr = (
                f"CI data guard: {item.nodeid} skipped for missing data, which CI does not "
                f"allow ({reason.removeprefix('Skipped: ')}). Provide the data (`make setup`)."
            )
