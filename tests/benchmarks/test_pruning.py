"""Pruning benchmark plumbing: disjoint splits, junk kinds, the Markdown table (no training)."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from benchmarks.pruning import ARMS, JUNK_KINDS, build_scenario, make_junk, markdown


def _frame(per_source: int = 60) -> pl.DataFrame:
    rows = []
    for src in ("bible", "pydocs", "wordnet"):
        for i in range(per_source):
            rows.append({"id": f"{src}-{i}", "source": src, "text": f"{src} text number {i} " * 5})
    return pl.DataFrame(rows)


@pytest.mark.parametrize("scenario", ["pydocs", "none"])
def test_scenario_splits_are_disjoint_and_shaped(scenario: str) -> None:
    pool, target, ev = build_scenario(_frame(), scenario, 100, 12, 10, seed=0)
    ids = [set(d["id"].to_list()) for d in (pool, target, ev)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert pool.height == 100 and pool["junk_kind"].is_not_null().sum() == 20
    assert set(pool["junk_kind"].drop_nulls().unique()) == set(JUNK_KINDS)
    assert ev.height == 10 and "junk_kind" not in ev.columns  # the evaluation split is clean
    if scenario == "none":
        assert target["junk_kind"].is_not_null().sum() == round(0.2 * 12)
        assert ev["source"].n_unique() > 1
    else:
        assert set(target["source"]) == set(ev["source"]) == {"pydocs"}
        assert target["junk_kind"].is_null().all()


def test_every_junk_kind_differs_from_its_donor() -> None:
    rng = random.Random(0)
    text = "The quick brown fox jumps over the lazy dog near the river bank today."
    for kind in JUNK_KINDS:
        out = make_junk(kind, text, rng)
        assert out and out != text, kind
    salad = make_junk("word_salad", text, rng).split()
    assert len(salad) >= 40 and all(w.isalpha() and w.islower() for w in salad)


def test_markdown_names_every_arm_and_the_unigram_line() -> None:
    arms = {
        a: {
            "eval_loss_mean": 5.0 + i / 10,
            "eval_loss_std": 0.01,
            "paired_diff_mean": i / 10,
            "paired_diff_sd": 0.01,
            "junk_removed": 0.5,
            "removal_precision": 0.3,
            "by_kind": dict.fromkeys(JUNK_KINDS, 0.5),
        }
        for i, a in enumerate(ARMS)
    }
    scen = {
        "scenario": "pydocs",
        "n_eval": 10,
        "unigram_eval_ce": 6.5,
        "untrained_ce": float(np.log(2048)),
        "n_target": 12,
        "n_target_junk": 0,
        "arms": arms,
        "auc": {"ckpt": dict.fromkeys(["all", *JUNK_KINDS], 0.6)},
        "dedup": {"n_removed": 3},
        "floor_kept_junk": 1,
    }
    meta = dict(
        command="python -m benchmarks.pruning",
        n_pool=100,
        keep=0.7,
        seq_len=64,
        vocab=2048,
        lr=3e-3,
        warm_start_steps=10,
        steps=20,
        seeds=[0, 1, 2],
        total_s=1.0,
    )
    md = markdown(meta, [scen])
    assert "**6.500**" in md and "Lowest mean eval loss: `random`" in md
    for a in ARMS:
        assert f"| {a} |" in md


def test_markdown_names_a_scoring_seed_only_when_it_differs_and_the_sketch_size() -> None:
    meta = dict(
        command="x", n_pool=100, keep=0.7, seq_len=64, vocab=2048, lr=3e-3,
        warm_start_steps=10, steps=20, seeds=[0, 1, 2], total_s=1.0,
    )  # fmt: skip
    scen = {
        "scenario": "none", "n_eval": 10, "unigram_eval_ce": 6.5, "untrained_ce": 7.6,
        "n_target": 12, "n_target_junk": 2, "auc": {}, "dedup": {"n_removed": 0},
        "floor_kept_junk": 0,
        "arms": {"adamshap": {
            "eval_loss_mean": 5.0, "eval_loss_std": 0.1, "paired_diff_mean": 0.0,
            "paired_diff_sd": 0.0, "junk_removed": 0.9, "removal_precision": 0.6,
            "by_kind": dict.fromkeys(JUNK_KINDS, 0.9),
        }},
    }  # fmt: skip
    assert "scoring run and clustering seeded" not in markdown(meta, [scen])
    assert "scoring run and clustering seeded 0" not in markdown({**meta, "score_seed": 0}, [scen])
    assert "scoring run and clustering seeded 2" in markdown({**meta, "score_seed": 2}, [scen])
    # the sketch size of the checkpoint values; results written before it was recorded used 16
    assert "3 snapshots, sketch 16;" in markdown(meta, [scen])
    assert "3 snapshots, sketch 64;" in markdown({**meta, "sketch_dim": 64}, [scen])
    # the retraining protocol: padded documents (earlier results) or one token budget
    assert "16 documents a step, padded" in markdown(meta, [scen])
    assert "one token budget" in markdown({**meta, "pack": True}, [scen])
    # epochs and the last-quarter change: "–" for results written before they were recorded
    assert "| 90% | 60% | – | – | – | – |" in markdown(meta, [scen])
    arm = {**scen["arms"]["adamshap"], "epochs": 9.25, "last_quarter_change": -0.0421}
    arm |= {"best_paired_diff_mean": 0.0123, "best_paired_diff_sd": 0.0045}
    newer = markdown(meta, [{**scen, "arms": {"adamshap": arm}}])
    assert "| 90% | 60% | – | 9.2 | -0.042 | +0.0123 ± 0.0045 |" in newer


@pytest.mark.integration
def test_a_small_run_scores_selects_and_retrains_every_named_arm(tmp_path) -> None:
    """End to end on a small demo corpus: a reseeded scoring run, the value+dsir arm beside the
    default, every arm keeping the same budget and retrained past the untrained loss."""
    import json

    from benchmarks.common import build_corpus
    from benchmarks.pruning import main

    corpus = build_corpus(60, 0, out_dir=tmp_path / "corpora")
    argv = ["--quick", "--corpus", str(corpus), "--scenarios", "pydocs", "--n-pool", "150"]
    argv += ["--n-target", "12", "--n-eval", "12", "--seeds", "1", "--score-seed", "3"]
    argv += ["--arms", "adamshap,value+dsir,dsir", "--work", str(tmp_path / "w")]
    argv += ["--results", str(tmp_path / "r"), "--tag", "t", "--pack", "--sketch-dim", "32"]
    assert main(argv) == 0
    out = json.loads((tmp_path / "r" / "t.json").read_text())
    assert out["meta"]["score_seed"] == 3
    run = json.loads((tmp_path / "w" / "t" / "pydocs" / "scores" / "run.json").read_text())
    assert run["args"]["seed"] == 3  # the scoring run itself was reseeded
    assert run["args"]["sketch_dim"] == 32 and out["meta"]["sketch_dim"] == 32
    assert out["meta"]["pack"] is True
    (s,) = out["scenarios"]
    assert list(s["arms"]) == ["adamshap", "value+dsir", "dsir"]
    for arm, r in s["arms"].items():
        assert r["n_kept"] == round(0.7 * 150), arm
        assert all(np.isfinite(r["eval_loss"])) and r["eval_loss_mean"] < s["untrained_ce"], arm
        assert 1 < r["tokens_per_row"] <= 128, arm  # real tokens of the kept rows, seq_len 128
        # packed: the 40 quick steps of 16 x 128 tokens, over the kept rows' real tokens
        kept = r["n_kept"] * r["tokens_per_row"]
        assert r["epochs"] == pytest.approx(40 * 16 * 128 / kept), arm
        assert np.isfinite(r["last_quarter_change"]), arm
        # the lowest point of each seed's curve is at most its final loss, paired like it
        assert all(b <= f for b, f in zip(r["best_eval_loss"], r["eval_loss"])), arm
        d = np.subtract(r["best_eval_loss"], s["arms"]["adamshap"]["best_eval_loss"])
        assert r["best_paired_diff_mean"] == pytest.approx(d.mean()), arm
    masks = np.load(tmp_path / "w" / "t" / "pydocs" / "masks.npz")
    # both recipes apply the quality rules first: neither keeps a row the rules flagged
    for k in ("adamshap", "value_dsir"):
        assert not (masks[k] & masks["flagged"]).any(), k
    assert "scoring run and clustering seeded 3" in (tmp_path / "r" / "t.md").read_text()
    # the curves' plot beside the table, linked from it
    assert (tmp_path / "r" / "t_pydocs.png").read_bytes()[:4] == b"\x89PNG"
    assert "](t_pydocs.png)" in (tmp_path / "r" / "t.md").read_text()
