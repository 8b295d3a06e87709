"""Source identification benchmark plumbing: the split, the metrics, the table (no training)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from benchmarks.source_id import sample_split, source_metrics, to_markdown
from curation.run_dir import RunDir


def _frame(per_source: int = 12) -> pl.DataFrame:
    rows = [
        {"id": f"{src}-{i:02d}", "source": src, "text": f"{src} {i}"}
        for src in ("bible", "pydocs", "wordnet")
        for i in range(per_source)
    ]
    return pl.DataFrame(rows)


def test_split_is_seeded_sized_and_disjoint() -> None:
    train, targets = sample_split(_frame(), per_source=8, target_docs=3, seed=0)
    assert train.height == 24 and set(targets) == {"bible", "pydocs", "wordnet"}
    for src, t in targets.items():
        assert t.height == 3 and set(t["source"]) == {src}
        assert not set(t["id"]) & set(train["id"])
    again, _ = sample_split(_frame(), per_source=8, target_docs=3, seed=0)
    assert again["id"].to_list() == train["id"].to_list()
    with pytest.raises(SystemExit, match="need 13"):
        sample_split(_frame(), per_source=10, target_docs=3, seed=0)


def test_metrics_rank_sources_and_normalise_recall(tmp_path: Path) -> None:
    # 4 documents per source; pydocs holds the top 3 values and one low one
    values = {"pydocs": [9.0, 8.0, 7.0, -5.0], "bible": [6.0, 1.0, 0.0, 0.0], "wordnet": [2.0] * 4}
    rows = [
        {"id": f"{s}-{i}", "source": s, "value_ckpt": v}
        for s, vs in values.items()
        for i, v in enumerate(vs)
    ]
    run = RunDir(tmp_path)
    pl.DataFrame(rows).write_parquet(run.values_by_example)
    m = source_metrics(tmp_path, "pydocs", "ckpt")
    # means: pydocs 4.75, wordnet 2.0, bible 1.75
    assert m["ranking"] == ["pydocs", "wordnet", "bible"] and m["top1"] and m["target_rank"] == 1
    assert m["k"] == 4 and m["recall_at_k"] == pytest.approx(3 / 4)
    assert m["normalised_recall_at_k"] == pytest.approx((3 / 4 - 1 / 3) / (1 - 1 / 3))
    b = source_metrics(tmp_path, "bible", "ckpt")
    assert not b["top1"] and b["target_rank"] == 3


def test_table_names_the_sketch_size() -> None:
    res = {
        "command": "python -m benchmarks.source_id",
        "config": {
            "per_source": 200, "target_docs": 48, "preset": "tiny", "seq_len": 64,
            "batch_size": 16, "target_batch_size": 16, "warm_start_steps": 250, "epochs": 1,
            "lr": 0.003, "seed": 0,
        },
        "n_train_docs": 1200,
        "seconds": 972.0,
        "summary": {"ckpt": {"top1_hits": 1, "mean_normalised_recall_at_k": 0.42,
                             "mean_target_rank": 1.0}},
        "per_target": {"bible": {"ckpt": {"ranking": ["bible"], "normalised_recall_at_k": 0.5}}},
    }  # fmt: skip
    assert "checkpoint values at sketch 16;" in to_markdown(res)  # before it was recorded
    assert "checkpoint values at sketch 64;" in to_markdown({**res, "sketch_dim": 64})
    assert "| `ckpt` | 1/1 | 0.420 | 1.00 |" in to_markdown(res)
