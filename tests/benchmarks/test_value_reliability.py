"""Value reliability benchmark: agreement of two value vectors, overall and within each source."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.value_reliability import agreement, main, markdown


def test_agreement_separates_source_level_from_within_source_agreement() -> None:
    # two runs that agree on which source is worth more, and on nothing inside a source
    rng = np.random.default_rng(0)
    sources = np.repeat(np.array(["a", "b"]), 50)
    level = np.where(sources == "a", 10.0, 0.0)
    x, y = level + rng.normal(size=100), level + rng.normal(size=100)
    clean = np.ones(100, bool)
    got = agreement(x, y, clean, sources)
    assert got["clean"] > 0.7  # the source level dominates the overall ranking
    assert abs(got["within_source"]["a"]) < 0.35 and abs(got["within_source"]["b"]) < 0.35
    # identical inside source a, reversed inside b; rows outside `clean` are left out
    y2 = x.copy()
    y2[sources == "b"] = -x[sources == "b"]
    clean[:5] = False
    got = agreement(x, y2, clean, sources)
    assert got["within_source"] == pytest.approx({"a": 1.0, "b": -1.0})
    assert got["within_source_mean"] == pytest.approx(0.0)


def test_markdown_has_one_row_per_sketch_size_with_its_time_ratio() -> None:
    ws = {"a": 0.25, "b": 0.5}
    row = {
        "between_runs": {"clean": 0.5, "within_source": ws, "within_source_mean": 0.375},
        "between_sketch_seeds": {"clean": 0.7},
        "junk_auc": [0.6, 0.7],
    }
    res = {
        "n_docs": 10,
        "n_junk": 2,
        "n_clean": 7,
        "score_seeds": [0, 1],
        "snapshots": [5, 10],
        "rows": [
            {**row, "k": 16, "seconds": 10.0, "time_ratio": 1.0},
            {**row, "k": 64, "seconds": 13.0, "time_ratio": 1.3},
        ],
    }
    md = markdown({"scenario": "pydocs", "command": "python -m x"}, res)
    body = [ln for ln in md.splitlines() if ln.startswith("| 16 ") or ln.startswith("| 64 ")]
    assert len(body) == 2
    assert "| 0.375 | 0.25 | 0.50 |" in body[0] and "1.30x (13 s)" in body[1]


def test_missing_scoring_runs_are_named_with_the_command_that_makes_them(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--score-seed N` first"):
        main(["--scenario", "pydocs", "--tags", "x,y", "--work", str(tmp_path)])
