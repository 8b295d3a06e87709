"""Makefile and CI script: the demo packages match the code, CI fails on zero tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _make_var(name: str) -> list[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{name} :=(.*)$", text, re.M)
    assert match, name
    return match.group(1).split()


def test_makefile_demo_packages_match_the_code():
    from curation.demo_corpus import DEMO_APT_PACKAGES

    assert _make_var("DEMO_APT_PACKAGES") == list(DEMO_APT_PACKAGES)


def test_makefile_has_the_documented_targets():
    text = (REPO / "Makefile").read_text()
    for target in ("setup", "demo", "test", "test-fast", "lint", "bench"):
        assert re.search(rf"^{re.escape(target)}:", text, re.M), target
    assert "$(PY) -m pytest -q\n" in text  # `make test` runs everything, integration included


def test_ci_script_is_strict_and_checks_the_test_count():
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "make setup" in text and "make test" in text and "ran > 0" in text


def test_makefile_installs_the_browser_for_the_report_test():
    """`make setup` installs Chromium with the demo packages (the report pages are checked in it)."""
    assert "chromium" in _make_var("TEST_APT_PACKAGES")
    text = (REPO / "Makefile").read_text()
    assert _make_var("APT_PACKAGES") == ["$(DEMO_APT_PACKAGES)", "$(TEST_APT_PACKAGES)"]
    apt = text[text.index("apt-packages:  ##") :].split("\n\n")[0]
    assert "dpkg -s $(APT_PACKAGES)" in apt and "install -y $(APT_PACKAGES)" in apt
