"""Bootstrap CIs of per-source mean values against the normal-theory interval."""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.bootstrap import bootstrap_mean_ci, source_bootstrap


def test_ci_width_matches_normal_theory_and_covers_the_mean():
    rng = np.random.default_rng(1)
    v = rng.normal(2.0, 3.0, size=400)
    lo, hi = bootstrap_mean_ci(v, n_boot=4000)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert lo < v.mean() < hi
    assert abs((hi - lo) / 2 - half) / half < 0.15


def test_constant_values_give_a_point_interval():
    lo, hi = bootstrap_mean_ci(np.full(10, -0.5))
    assert lo == hi == -0.5


def test_source_table_ranks_by_mean_and_flags_zero():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 0.1, 50), rng.normal(-1.0, 0.1, 50)
    c = np.concatenate([rng.normal(0.0, 1.0, 50)])
    df = pl.DataFrame(
        {
            "source": ["a"] * 50 + ["b"] * 50 + ["c"] * 50,
            "value_adam2": np.concatenate([a, b, c]),
        }
    )
    out = source_bootstrap(df, "value_adam2")
    assert out["source"].to_list()[0] == "a" and out["source"].to_list()[-1] == "b"
    assert out["rank"].to_list() == [1, 2, 3]
    flags = dict(zip(out["source"], out["excludes_zero"]))
    assert flags["a"] and flags["b"]
    assert abs(sum(x for x in out["share"].to_list()) - 1.0) < 1e-12
