"""The source-removal truth benchmark: evaluation split disjointness, Spearman, the markdown."""

from __future__ import annotations

import pytest

from benchmarks import instruct_truth as it
from curation.demo_corpus import missing_inputs


def test_spearman_orders():
    assert it.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert it.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_markdown_names_the_harmful_source():
    sources = ["a", "pydoc-function", "shuffled"]
    deltas = {"a": [0.01, 0.02], "pydoc-function": [0.3, 0.2], "shuffled": [-0.05, -0.01]}
    arms = {"full": {"n_train": 30, "eval_loss": [5.0, 5.1], "delta": [0.0, 0.0]}}
    for s in sources:
        arms[s] = {"n_train": 20, "delta": deltas[s]}
    for a in arms.values():
        a["seeds"] = a["delta_seeds"] = [0, 1]
    for name, a in arms.items():
        d = a["delta"]
        a.update(
            eval_loss_mean=5.05 + sum(d) / 2,
            eval_loss_sd=0.07,
            delta_mean=sum(d) / 2,
            delta_sd=abs(d[0] - d[1]) / 2**0.5,
        )
        if name != "full":
            a["eval_loss"] = [5.0 + d[0], 5.1 + d[1]]
    res = {
        "command": "python -m benchmarks.instruct_truth",
        "epochs": 1,
        "n_train": 30,
        "settings": "preset tiny",
        "steps": 10,
        "seeds": [0, 1],
        "n_eval": 8,
        "total_s": 1.0,
        "cached_retrains": 0,
        "complete": False,
        "retrains_done": 8,
        "retrains_planned": 9,
        "spearman_sources": sources,
        "unigram_eval_ce": 6.0,
        "unigram_target_ce": 6.1,
        "untrained_ce": 8.3,
        "arms": arms,
        "spearman_vs_delta": {"adam2": 0.5},
    }
    md = it.to_markdown(res)
    assert "Most harmful by removal: `shuffled`" in md and "rank 1 of 3" in md
    assert "| without shuffled | 20 |" in md and "| adam2 | +0.500 |" in md
    assert "s0: -0.0500, s1: -0.0100" in md and "**Incomplete**: 8 of 9" in md


@pytest.mark.skipif(bool(missing_inputs()), reason="the demo's Debian packages are not installed")
def test_evaluation_split_is_unused_by_the_mixture():
    from curation.instruct_corpus import instruct_frame

    df = instruct_frame(per_source=30, seed=0)
    ev = it.evaluation_split(df, 40, seed=0)
    assert ev.height == 40 and ev["prompt"].n_unique() == 40
    assert not set(ev["prompt"]) & set(df["prompt"])
    assert not set(ev["response"]) & set(df["response"])
    assert all(p.startswith("What does the Python function") for p in ev["prompt"])


def test_summarise_arms_pairs_deltas_by_seed():
    import numpy as np

    keeps = {"full": np.ones(4, bool), "a": np.array([1, 1, 0, 0], bool)}
    done = {
        ("full", 0): {"final_loss": 5.0},
        ("full", 1): {"final_loss": 6.0},
        ("a", 0): {"final_loss": 4.5},
        ("a", 1): {"final_loss": 5.7},
        ("a", 2): {"final_loss": 9.0},  # no full run on seed 2: not paired
    }
    arms = it.summarise_arms(done, keeps, [0, 1, 2])
    assert arms["a"]["n_train"] == 2 and arms["a"]["seeds"] == [0, 1, 2]
    assert arms["a"]["delta_seeds"] == [0, 1]
    assert arms["a"]["delta"] == pytest.approx([-0.5, -0.3])
    assert arms["a"]["delta_mean"] == pytest.approx(-0.4)
    assert arms["full"]["delta"] == [0.0, 0.0]


def test_retraining_reads_cached_arms_without_training(tmp_path):
    import json

    import numpy as np

    keeps = {"full": np.ones(3, bool), "a": np.array([1, 0, 1], bool)}
    r = it.Retraining(tmp_path, None, None, 7, ("cfg",), 10, 1)
    f = it._cache_file(tmp_path, keeps["a"], ("cfg",), 7, 0)
    f.write_text(json.dumps({"seed": 0, "final_loss": 4.25, "curve": []}))
    done, cached = r.run(keeps, [("full", 0), ("a", 0)], True, 6.0, 0.0)
    assert cached == 1 and done == {("a", 0): {"seed": 0, "final_loss": 4.25, "curve": []}}


def test_values_that_order_sources_as_removal_does_correlate_plus_one():
    # removing "good" raises the loss most (it helps most), "bad" lowers it (it hurts)
    arms = {"good": {"delta_mean": 0.3}, "meh": {"delta_mean": 0.01}, "bad": {"delta_mean": -0.1}}
    right = {"good": 2.0, "meh": 0.5, "bad": -1.0}
    corr = it.value_correlations(
        {"right": right, "wrong": {"good": -1, "meh": 0, "bad": 3}}, arms, list(arms)
    )
    assert corr["right"] == pytest.approx(1.0) and corr["wrong"] == pytest.approx(-1.0)
