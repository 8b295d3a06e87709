"""Bootstrap confidence intervals of each source's mean example value (resampling its examples)."""

from __future__ import annotations

import numpy as np
import polars as pl

N_BOOT = 2000
LEVEL = 0.95


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (examples resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def source_bootstrap(
    by_example: pl.DataFrame,
    column: str,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> pl.DataFrame:
    """Per source: n, total, mean, share, frac_negative and the bootstrap CI of the mean, ranked.

    `column` is a per-example value column of `values_by_example.parquet` (e.g. `value_adam2`).
    Rank 1 is the highest mean. `excludes_zero` says whether the interval lies on one side of 0.
    """
    grand = float(by_example[column].sum())
    rows = []
    for k, src in enumerate(sorted(by_example["source"].unique().to_list())):
        v = by_example.filter(pl.col("source") == src)[column].to_numpy()
        lo, hi = bootstrap_mean_ci(v, n_boot, level, seed + k)
        rows.append(
            {
                "source": src,
                "n_examples": int(v.size),
                "total": float(v.sum()),
                "mean": float(v.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "excludes_zero": bool(lo > 0 or hi < 0),
                "share": float(v.sum()) / grand if grand != 0 else None,
                "frac_negative": float((v < 0).mean()),
            }
        )
    df = pl.DataFrame(rows).sort("mean", descending=True)
    return df.with_columns(pl.int_range(1, df.height + 1).alias("rank")).select(
        "rank", *[c for c in df.columns]
    )
