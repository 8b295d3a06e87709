"""Pooling pruning results over scoring runs: paired differences per run and over all pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.pruning_pool import main, markdown, pool


def _arm(loss: list[float], ref: list[float]) -> dict:
    """One arm as `benchmarks.pruning` writes it (its losses and the paired differences)."""
    d = np.array(loss) - np.array(ref)
    return {
        "eval_loss": loss,
        "eval_loss_mean": float(np.mean(loss)),
        "paired_diff_vs_adamshap": d.tolist(),
        "paired_diff_mean": float(d.mean()),
        "paired_diff_sd": float(d.std(ddof=1)),
    }


def _run(default: list[float], dsir: list[float], score_seed: int, scenario: str = "pydocs"):
    arms = {"adamshap": _arm(default, default), "dsir": _arm(dsir, default)}
    meta = {"steps": 1200, "seeds": [0, 1, 2], "score_seed": score_seed}
    return {
        "meta": meta,
        "scenarios": [{"scenario": scenario, "unigram_eval_ce": 6.7, "arms": arms}],
    }


def test_pooled_difference_is_over_every_scoring_run_and_seed_pair() -> None:
    a = _run([4.7, 4.8, 4.9], [4.8, 4.7, 5.2], 0)
    b = _run([4.6, 4.9, 4.8], [4.8, 4.7, 5.2], 1)
    p = pool([("s0", a), ("s1", b)])
    d = np.array([0.1, -0.1, 0.3, 0.2, -0.2, 0.4])
    q = p["pooled"]["dsir"]
    assert q["n_pairs"] == 6 and q["favour_default"] == 4
    assert q["diff_mean"] == pytest.approx(d.mean()) and q["diff_sd"] == pytest.approx(
        d.std(ddof=1)
    )
    assert p["runs"][1]["arms"]["dsir"]["diff_mean"] == pytest.approx(d[3:].mean())
    assert p["default_spread"] == pytest.approx(0.0333333, abs=1e-6)


def test_runs_of_different_scenarios_or_seeds_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        pool(
            [("a", _run([1, 2, 3], [1, 2, 3], 0)), ("b", _run([1, 2, 3], [1, 2, 3], 1, "wordnet"))]
        )
    c = _run([1, 2, 3], [1, 2, 3], 1)
    c["meta"]["seeds"] = [0, 1, 5]
    with pytest.raises(ValueError, match="differ"):
        pool([("a", _run([1, 2, 3], [1, 2, 3], 0)), ("b", c)])


def test_main_writes_json_and_a_table_with_the_labels(tmp_path: Path) -> None:
    for i, seed in enumerate((0, 1)):
        (tmp_path / f"r{i}.json").write_text(
            json.dumps(_run([4.7, 4.8, 4.9], [4.8, 4.9, 5.0], seed))
        )
    out = tmp_path / "pooled.x"
    assert (
        main([f"first={tmp_path / 'r0.json'}", str(tmp_path / "r1.json"), "--out", str(out)]) == 0
    )
    md = Path(f"{out}.md").read_text()
    assert "| arm | first | r1 | pooled |" in md and "(6/6 favour the default)" in md
    assert json.loads(Path(f"{out}.json").read_text())["pooled"]["dsir"]["n_pairs"] == 6


def test_an_arm_missing_from_a_run_is_pooled_over_the_runs_that_have_it() -> None:
    a = _run([4.7, 4.8, 4.9], [4.8, 4.7, 5.2], 0)
    b = _run([4.6, 4.9, 4.8], [4.8, 4.7, 5.2], 1)
    a["scenarios"][0]["arms"]["rules+dsir"] = _arm([4.6, 4.8, 5.1], [4.7, 4.8, 4.9])
    p = pool([("s0", a), ("s1", b)])
    assert p["arms"] == ["adamshap", "dsir", "rules+dsir"]
    assert p["pooled"]["rules+dsir"]["n_pairs"] == 3 and p["pooled"]["dsir"]["n_pairs"] == 6
    assert "rules+dsir" not in p["runs"][1]["arms"]
    assert "| rules+dsir | +0.033 ± 0.153 | – |" in markdown(p)
