"""The pruning-at-scale benchmark on a small size: inputs as described, every phase measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.prune_scale import make_inputs, markdown, measure, slope


def test_small_run_measures_every_phase(tmp_path: Path) -> None:
    info = make_inputs(3000, tmp_path / "in", dim=32, epochs=2)
    assert info["ledger_rows"] == 2 * (3000 - info["n_target"])
    emb = np.load(tmp_path / "in" / "embeddings.npy")
    assert emb.shape == (3000, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    ledger = pl.read_parquet(tmp_path / "in" / "run" / "ledger" / "*.parquet")
    assert ledger["epoch"].unique().sort().to_list() == [0, 1]
    r = measure(tmp_path / "in")
    assert list(r["seconds"]) == [
        "load", "aggregate", "values", "similarity", "cluster", "shingles", "select"
    ]  # fmt: skip
    assert r["n_kept"] == round(0.7 * 3000)
    # exact and near copies are found and confirmed; look-alikes are candidates only
    assert 0 < r["dedup"]["confirmed_pairs"] < r["dedup"]["candidate_pairs"]
    assert r["peak_rss_mib"] > 0 and r["pairs_compared"] >= 3000
    again = measure(tmp_path / "in")
    assert again["kept_sha256"] == r["kept_sha256"]
    r["ledger_rows"] = info["ledger_rows"]
    payload = {
        "command": "x", "dim": 32, "epochs": 2, "threads": 1, "machine": "m", "note": "",
        "rows": [r, {**r, "n": 6000}],
        "slopes": {"stage_s": 1.0, "peak_rss_mib": 1.0, "phases": dict.fromkeys(r["seconds"], 1.0)},
    }  # fmt: skip
    assert "| 3,000 |" in markdown(payload)
    assert abs(slope([10, 100], [1, 100]) - 2.0) < 1e-9
