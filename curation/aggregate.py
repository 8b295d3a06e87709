"""Aggregate the per-step ledger into per-example and per-source values (polars).

Definitions, per estimator `<est>` (column suffix uses `_` for `-`):
- per example: `value_<est>` = sum of its per-step values over the run (every time it was trained
  on), `mean_<est>` = that sum / `n_steps` (number of times it was scored).
- per source: `total_<est>` = sum of the example values, `mean_<est>` = total / `n_examples` (mean
  value per example), `share_<est>` = total / (sum of all sources' totals), i.e. the *signed* share of
  the summed value (shares add up to 1; a source with negative total has a negative share, and shares
  can exceed 1 when totals have mixed signs; null when the grand total is 0), `frac_negative_<est>` = fraction of its examples whose
  value is < 0. `n_tokens` is the number of counted target tokens of the source's examples
  (from `examples.parquet`, written by the scoring run; null when that file is absent).

A run scored with `--momentum-window K` also gets, per example, `value_<est>_prop` = the sum of
its momentum-propagated values (own value + carry-over through Adam's `m`, from
`ledger_momentum/`) and `mean_<est>_prop`; per source they are aggregated like any estimator.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .atomic import atomic_write_parquet
from .ledger import PROP_SUFFIX, read_ledger, read_momentum_ledger, scan_ledger
from .run_dir import RunDir


def estimator_suffixes(ledger: pl.DataFrame) -> list[str]:
    """Estimator suffixes present in a ledger (`value_adam_loo` -> `adam_loo`)."""
    return [c.removeprefix("value_") for c in ledger.columns if c.startswith("value_")]


def values_by_example(ledger: pl.DataFrame) -> pl.DataFrame:
    """Per-example run values: id, source, n_steps, value_<est> (sum), mean_<est>."""
    ests = estimator_suffixes(ledger)
    aggs = [pl.len().cast(pl.Int64).alias("n_steps")]
    aggs += [pl.col(f"value_{e}").sum().alias(f"value_{e}") for e in ests]
    df = ledger.group_by("id", "source", maintain_order=True).agg(aggs)
    df = df.with_columns(
        [(pl.col(f"value_{e}") / pl.col("n_steps")).alias(f"mean_{e}") for e in ests]
    )
    return df.sort("id")


def propagated_by_example(momentum: pl.DataFrame) -> pl.DataFrame:
    """Per-example sums of the momentum-propagated values: id, value_<est>_prop."""
    cols = [c for c in momentum.columns if c.startswith("value_") and c.endswith(PROP_SUFFIX)]
    return momentum.group_by("id", maintain_order=True).agg(pl.col(c).sum() for c in cols)


def values_by_source(by_example: pl.DataFrame, examples: pl.DataFrame | None) -> pl.DataFrame:
    """Per-source totals, means, signed shares and negative fractions (see module docstring)."""
    ests = [c.removeprefix("mean_") for c in by_example.columns if c.startswith("mean_")]
    df = by_example
    if examples is not None:
        df = df.join(examples.select("id", "n_tokens"), on="id", how="left")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias("n_tokens"))
    aggs = [
        pl.len().cast(pl.Int64).alias("n_examples"),
        pl.col("n_tokens").sum().cast(pl.Int64).alias("n_tokens"),
    ]
    for e in ests:
        v = pl.col(f"value_{e}")
        aggs += [
            v.sum().alias(f"total_{e}"),
            v.mean().alias(f"mean_{e}"),
            (v < 0).mean().cast(pl.Float64).alias(f"frac_negative_{e}"),
        ]
    out = df.group_by("source").agg(aggs)
    out = out.with_columns(
        [
            # a zero grand total has no shares: null, never NaN
            pl.when(pl.col(f"total_{e}").sum() != 0)
            .then(pl.col(f"total_{e}") / pl.col(f"total_{e}").sum())
            .otherwise(None)
            .alias(f"share_{e}")
            for e in ests
        ]
    )
    order = ["source", "n_examples", "n_tokens"]
    for e in ests:
        order += [f"total_{e}", f"mean_{e}", f"share_{e}", f"frac_negative_{e}"]
    return out.select(order).sort("source")


def aggregate_run(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `values_by_example.parquet` and `values_by_source.parquet` for a run; return paths."""
    run = RunDir(run_dir)
    run_dir = run.path
    names = scan_ledger(run_dir).collect_schema().names()
    ledger = read_ledger(run_dir, ["id", "source", *(c for c in names if c.startswith("value_"))])
    by_example = values_by_example(ledger)
    ckpt_path = run.checkpoint_values
    if ckpt_path.exists():
        ckpt = pl.read_parquet(ckpt_path).select("id", "value_ckpt")
        by_example = by_example.join(ckpt, on="id", how="left").with_columns(
            pl.col("value_ckpt").alias("mean_ckpt")
        )
    momentum = read_momentum_ledger(run_dir)
    if momentum is not None:
        prop = propagated_by_example(momentum)
        cols = [c for c in prop.columns if c != "id"]
        by_example = by_example.join(prop, on="id", how="left").with_columns(
            (pl.col(c) / pl.col("n_steps")).alias("mean_" + c.removeprefix("value_")) for c in cols
        )
    ex_path = run.examples
    examples = pl.read_parquet(ex_path) if ex_path.exists() else None
    by_source = values_by_source(by_example, examples)
    p1 = atomic_write_parquet(by_example, run.values_by_example)
    p2 = atomic_write_parquet(by_source, run.values_by_source)
    return p1, p2
