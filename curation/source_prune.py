"""`adamshap prune --by source`: keep or drop whole sources (e.g. RAG retrieval sources) by value.

Rule: rank the sources by the mean value of their (non-target) examples, with a bootstrap CI of
that mean; keep whole sources from the top while the kept rows stay within `keep` of the
non-target rows (the best source is always kept). Every row of a dropped source is excluded with
reason `low_value_source`; target rows are kept. No embeddings or clusters are involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .bootstrap import LEVEL, source_bootstrap
from .render import Page, Section, Table, write_page
from .run_dir import PRUNE_REPORT_STEM


def choose_sources(table: pl.DataFrame, keep: float) -> list[str]:
    """Sources kept: from the highest mean down while their rows stay within `keep` of all rows."""
    total = int(table["n_examples"].sum())
    kept, rows = [], 0
    for r in table.sort("mean", descending=True).iter_rows(named=True):
        if kept and rows + r["n_examples"] > keep * total:
            break
        kept.append(r["source"])
        rows += r["n_examples"]
    return kept


def prune_by_source(
    df: pl.DataFrame, values: np.ndarray, is_target: np.ndarray, keep: float, seed: int = 0
) -> tuple[np.ndarray, list[str | None], pl.DataFrame]:
    """Kept mask, per-row reason (None when kept) and the ranked source table with decisions."""
    scored = ~is_target & ~np.isnan(values)
    by_ex = pl.DataFrame(
        {"source": df["source"].to_numpy()[scored], "value": values[scored]},
        schema={"source": pl.String, "value": pl.Float64},
    )
    table = source_bootstrap(by_ex, "value", seed=seed)
    kept_sources = set(choose_sources(table, keep))
    table = table.with_columns(pl.col("source").is_in(list(kept_sources)).alias("kept"))
    src = df["source"].to_list()
    kept = np.array([bool(t) or s in kept_sources for s, t in zip(src, is_target)], bool)
    reason: list[str | None] = [
        None if k else "low_value_source" for k in kept
    ]  # target rows stay kept
    return kept, reason, table


def source_page(table: pl.DataFrame, summary: dict[str, Any]) -> Page:
    """The by-source pruning report: the kept and dropped sources first, then the ranking."""
    head = ["rank", "source", "n_examples", "mean", "ci_low", "ci_high", "frac_negative", "kept"]
    kept = table.filter(pl.col("kept"))["source"].to_list()
    dropped = table.filter(~pl.col("kept"))["source"].to_list()
    intro = (
        f"Whole sources ranked by mean example value ({summary['estimator']}, "
        f"{LEVEL:.0%} bootstrap CI over examples); kept from the top while within "
        f"keep = {summary['keep']} of the rows. Kept {summary['n_kept']} of {summary['n_docs']} "
        f"rows (target rows included)."
    )
    return Page(
        title="Prune report (by source)",
        answer=[
            f"kept {len(kept)} of {table.height} sources: " + ", ".join(f"`{s}`" for s in kept),
            "dropped: " + (", ".join(f"`{s}`" for s in dropped) or "none"),
        ],
        note=intro,
        sections=[
            Section(
                "Sources, ranked", table=Table(head, [list(r) for r in table.select(head).rows()])
            )
        ],
    )


def write_source_report(out: Path, table: pl.DataFrame, summary: dict[str, Any]) -> None:
    """prune_report.md / .html: the ranked sources, their CIs and which were kept."""
    write_page(out, PRUNE_REPORT_STEM, source_page(table, summary))
