"""The repository stands alone: test data made here, a CI guard on data skips, no outside paths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.data_guard import guard_active, is_data_skip
from tests.fixtures import SOURCES, fixture_corpus, fixture_docs, fixture_rows

REPO = Path(__file__).resolve().parents[1]

GUARDED = textwrap.dedent(
    """
    import pytest

    def test_fixture_style_skip():
        pytest.skip("missing test data: the corpus is absent")

    @pytest.mark.skipif(True, reason="real corpus not found at /nowhere/corpus.jsonl.gz")
    def test_marked_skip():
        pass

    def test_cuda_skip():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")

    def test_passes():
        assert True
    """
)


def _child_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_guarded.py").write_text(GUARDED, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ADAMSHAP_DATA_GUARD")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("PYTEST_ADDOPTS", None)
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.data_guard"]
    cmd += ["-p", "no:cacheprovider", "test_guarded.py"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_guard_fails_data_skips_in_ci_only(tmp_path):
    res = _child_pytest(tmp_path, ci="true")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "CI data guard" in out
    for name in ("test_fixture_style_skip", "test_marked_skip"):
        assert re.search(rf"(FAILED|ERROR) test_guarded.py::{name}", out), (name, out)
    assert re.search(r"SKIPPED \[1\] test_guarded.py:\d+: needs a CUDA device", out), out
    assert re.search(r"PASSED test_guarded.py::test_passes", out), out

    local = _child_pytest(tmp_path, ci=None)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "3 skipped" in local.stdout and "1 passed" in local.stdout


def test_guard_switch_and_reason_matching(monkeypatch):
    monkeypatch.delenv("ADAMSHAP_DATA_GUARD", raising=False)
    for value, active in (("true", True), ("1", True), ("false", False), ("0", False), ("", False)):
        monkeypatch.setenv("CI", value)
        assert guard_active() is active, value
    monkeypatch.delenv("CI")
    assert not guard_active()
    monkeypatch.setenv("ADAMSHAP_DATA_GUARD", "1")
    assert guard_active()
    assert is_data_skip("Skipped: missing test data: x")
    assert is_data_skip("demo Debian packages not installed; install with: apt-get ...")
    assert not is_data_skip("needs a CUDA device (torch.cuda.is_available() is False)")
    assert not is_data_skip("prune finished before the interrupt arrived")


def test_fixture_corpus_is_built_here_with_every_source():
    path = fixture_corpus()
    if not os.environ.get("ADAMSHAP_TEST_CORPUS"):
        assert REPO not in path.resolve().parents  # built in a temporary folder, not the checkout
    by = fixture_docs(12)
    assert list(by) == list(SOURCES)
    assert all(len(v) == 12 for v in by.values())
    assert all(r["id"].startswith(f"{s}-") and r["text"].strip() for s in by for r in by[s])
    rows = fixture_rows(3)
    assert [r["source"] for r in rows] == [s for s in sorted(SOURCES) for _ in range(3)]
    assert fixture_docs(3)["bible"] == by["bible"][:3]  # "the first N" of each source


def test_missing_corpus_is_a_data_skip_not_a_silent_pass(monkeypatch, tmp_path):
    import tests.fixtures as fx

    monkeypatch.setenv("ADAMSHAP_TEST_CORPUS", str(tmp_path / "absent.jsonl"))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ADAMSHAP_DATA_GUARD", raising=False)
    fx.fixture_corpus.cache_clear()
    try:
        with pytest.raises(pytest.skip.Exception, match="missing test data"):
            fx.fixture_corpus()
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="missing test data"):
            fx.fixture_corpus()
    finally:
        fx.fixture_corpus.cache_clear()


# Spelled with [/] so that this line does not match itself.
OUTSIDE = re.compile(
    r"\.\.[/]shared|[/]shared[/]corpora|shared[/]DESIGN|\"shared\"\s*/\s*\"corpora\""
)


def test_nothing_reads_a_path_outside_the_repository():
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = re.compile(r"(\.py|\.md|\.yaml|\.yml|\.sh|\.toml|Makefile|\.ci/run)$")
    hits = []
    for name in files:
        path = REPO / name
        if not wanted.search(name) or not path.is_file():
            continue
        for k, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{k + 1}: {line.strip()}")
    assert not hits, "\n".join(hits)
