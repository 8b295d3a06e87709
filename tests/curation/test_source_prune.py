"""prune --by source: whole sources kept or dropped by their mean example value."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from curation.corpus import read_corpus
from curation.prune import PruneArgs, run_prune
from flows.cli import main

MEANS = {"good": 1.0, "middling": 0.2, "harmful": -0.8}


def _fake_run(tmp_path):
    rng = np.random.default_rng(0)
    rows, vals = [], []
    for src, mu in MEANS.items():
        for k in range(10):
            i = f"{src}-{k}"
            rows.append({"id": i, "source": src, "text": f"{src} document number {k}"})
            vals.append(
                {"id": i, "source": src, "n_steps": 1, "value_adam2": mu + 0.1 * rng.normal()}
            )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # two "good" rows
    run = tmp_path / "run"
    run.mkdir()
    pl.DataFrame(vals).write_parquet(run / "values_by_example.parquet")
    (run / ".complete").write_text("{}\n")  # prune takes finished runs only
    return corpus, target, run


def test_drops_the_lowest_sources_within_keep(tmp_path):
    corpus, target, run = _fake_run(tmp_path)
    out = run_prune(
        PruneArgs(
            corpus=str(corpus), keep=0.7, out=str(tmp_path / "p"), scores=str(run),
            target=str(target), by="source", progress=False,
        )
    )  # fmt: skip
    kept = read_corpus(out / "kept.jsonl").df
    excluded = pl.read_ndjson(out / "excluded.jsonl")
    # 28 non-target rows; good (8) + middling (10) = 18 <= 0.7 * 28, adding harmful would not be.
    assert set(kept["source"]) == {"good", "middling"}
    assert kept.height == 20  # the two target rows stay
    assert set(excluded["source"]) == {"harmful"} and excluded.height == 10
    assert set(excluded["reason"]) == {"low_value_source"}
    summary = json.loads((out / "prune.json").read_text())["summary"]
    ranking = [s["source"] for s in summary["sources"]]
    assert ranking == ["good", "middling", "harmful"]
    harmful = summary["sources"][-1]
    assert harmful["ci_high"] < 0 and harmful["excludes_zero"]
    assert "harmful" in (out / "prune_report.md").read_text()


def test_cli_by_source_keeps_at_least_the_best_source(tmp_path):
    corpus, target, run = _fake_run(tmp_path)
    rc = main(
        [
            "prune", str(corpus), "--keep", "0.1", "--scores", str(run), "--target", str(target),
            "--by", "source", "--out", str(tmp_path / "q"),
        ]
    )  # fmt: skip
    assert rc == 0
    kept = read_corpus(tmp_path / "q" / "kept.jsonl").df
    assert set(kept["source"]) == {"good"}
