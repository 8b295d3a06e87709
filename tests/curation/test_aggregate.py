"""Per-example and per-source aggregation of a hand-made ledger."""

from __future__ import annotations

import polars as pl
import pytest

from curation.aggregate import aggregate_run
from curation.ledger import LedgerWriter


def test_aggregate_by_hand(tmp_path) -> None:
    w = LedgerWriter(tmp_path, ("adam-loo", "sgd"))
    w.add_step(
        1,
        0,
        ["x", "y", "z"],
        ["a", "a", "b"],
        1e-3,
        [1, 1, 1],
        {"adam-loo": [1.0, -2.0, 3.0], "sgd": [0.5, 0.5, 0.5]},
    )
    w.add_step(
        2, 1, ["x", "z"], ["a", "b"], 1e-3, [1, 1], {"adam-loo": [1.0, 1.0], "sgd": [0.5, -1.0]}
    )
    w.flush()
    pl.DataFrame(
        {"id": ["x", "y", "z"], "source": ["a", "a", "b"], "n_tokens": [10, 20, 5]}
    ).write_parquet(tmp_path / "examples.parquet")
    p_ex, p_src = aggregate_run(tmp_path)
    ex = pl.read_parquet(p_ex)
    assert ex["id"].to_list() == ["x", "y", "z"]
    assert ex["n_steps"].to_list() == [2, 1, 2]
    assert ex["value_adam_loo"].to_list() == [2.0, -2.0, 4.0]
    assert ex["mean_adam_loo"].to_list() == [1.0, -2.0, 2.0]
    src = pl.read_parquet(p_src)
    a = src.filter(pl.col("source") == "a").row(0, named=True)
    b = src.filter(pl.col("source") == "b").row(0, named=True)
    assert a["n_examples"] == 2 and a["n_tokens"] == 30
    assert a["total_adam_loo"] == 0.0 and a["mean_adam_loo"] == 0.0
    assert a["frac_negative_adam_loo"] == 0.5
    assert b["total_adam_loo"] == 4.0
    assert a["share_adam_loo"] + b["share_adam_loo"] == pytest.approx(1.0)
    assert b["share_sgd"] == pytest.approx(-0.5 / 1.0)
    assert b["frac_negative_sgd"] == 1.0
