"""`adamshap prune`: value-ranked pruning under FAISS-cluster quotas, with a report.

Outputs in OUT_DIR: kept.<ext> (input format and fields), excluded.<ext> (plus `reason`,
`value`), prune.json (arguments + summary; written last, so its presence means complete),
prune_report.md/.html, and, when no --target is given, target.<ext> (the held-out sample).

Similarity: the proxy embeddings are centred on the corpus mean and re-normalised
(`curation.embed.prepare_for_similarity`) once, and that one array feeds both the k-means
clusters and the near-duplicate candidates. Near-duplicates are proposed by embedding cosine
(> 1 - dedup_eps, same cluster) and confirmed on the untruncated token ids (Jaccard of token
3-gram sets >= dedup_jaccard); see `curation.selection`. The rule, its counts and a loud warning
when it would exclude more than max_dedup_frac of the corpus are in prune.json and the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.errors import UsageError
from curation.selection import SelectionResult, select, validate_keep

__all__ = ["PruneArgs", "SelectionResult", "run_prune", "select", "validate_keep"]

TARGET_MIN = 16


@dataclass
class PruneArgs:
    """Arguments of `adamshap prune` (saved in prune.json)."""

    corpus: str
    keep: float = 0.7
    out: str = "prune_out"
    scores: str | None = None
    target: str | None = None
    clusters: int | None = None
    dedup_eps: float = 0.02
    dedup_jaccard: float = 0.8
    max_dedup_frac: float = 0.3
    estimator: str = "adam2"
    floor: float | None = None
    seed: int = 0
    target_frac: float = 0.05
    progress: bool = True
    by: str = "row"  # "source": keep or drop whole sources (curation/source_prune.py)


def value_column(estimator: str) -> str:
    """Column of values_by_example.parquet holding an estimator's run value."""
    return "value_" + estimator.replace("-", "_")


def _ext(path: Path) -> str:
    """Output suffix for a corpus path: '.jsonl', '.jsonl.gz' or '.parquet' (HF folders: parquet)."""
    from curation.corpus import corpus_format

    fmt = corpus_format(path)
    return ".parquet" if fmt == "hf" else f".{fmt}"


def write_table(df: pl.DataFrame, path: Path) -> Path:
    """Write every column of `df` (extra ones included) as JSONL(.gz) or Parquet, atomically."""
    import gzip
    import io

    from curation.atomic import atomic_path

    name = path.name
    with atomic_path(path) as tmp:
        if name.endswith(".parquet"):
            df.write_parquet(tmp)
            return path
        buf = io.StringIO()
        for rec in df.iter_rows(named=True):
            buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
        data = buf.getvalue().encode("utf-8")
        if name.endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as g:
                g.write(data)
        else:
            tmp.write_bytes(data)
    return path


def holdout_target(n: int, frac: float, seed: int) -> np.ndarray:
    """Seeded random held-out mask: max(16, round(frac*n)) docs, at most half the corpus."""
    m = min(max(TARGET_MIN, round(frac * n)), n // 2)
    mask = np.zeros(n, bool)
    if m > 0:
        mask[np.random.default_rng(seed).choice(n, size=m, replace=False)] = True
    return mask


def _run_target(run_dir: Path) -> str | None:
    """Target path recorded in a scoring run's run.json, if any."""
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    args = meta.get("args", meta) if isinstance(meta, dict) else {}
    t = args.get("target") if isinstance(args, dict) else None
    return str(t) if t else None


def _target_ids(path: str | None) -> set[str]:
    """Ids in a target corpus file (empty when unknown or unreadable)."""
    from curation.corpus import read_corpus

    if not path or not Path(path).exists():
        return set()
    return set(read_corpus(path).df["id"].cast(pl.Utf8).to_list())


def _score(
    args: PruneArgs, df: pl.DataFrame, is_target: np.ndarray, target: str, out: Path
) -> Path:
    """Run the scoring stage with defaults on the non-target documents; returns the run dir."""
    from curation.corpus import write_corpus
    from curation.scoring_run import ScoreArgs, run_scoring

    train_path = out / "work" / f"train{_ext(Path(args.corpus))}"
    write_corpus(df.filter(pl.Series(~is_target)), train_path)
    score_args = ScoreArgs(corpus=str(train_path), target=str(target), out=str(out / "scores"))
    if hasattr(score_args, "seed"):
        score_args.seed = args.seed
    return Path(run_scoring(score_args))


def _load_values(run_dir: Path, ids: list[str], estimator: str) -> tuple[np.ndarray, int]:
    """Per-document values of `estimator` aligned to ids (NaN where unscored), and #missing."""
    path = run_dir / "values_by_example.parquet"
    if not path.exists():
        raise UsageError(f"{path} not found: --scores must be a finished `adamshap score` run dir")
    vals = pl.read_parquet(path)
    col = value_column(estimator)
    if col not in vals.columns:
        have = sorted(c[6:] for c in vals.columns if c.startswith("value_"))
        raise UsageError(f"estimator {estimator!r} not in {path.name}; available: {have}")
    lut = dict(zip(vals["id"].cast(pl.Utf8).to_list(), vals[col].to_list()))
    v = np.array([lut.get(i) if lut.get(i) is not None else np.nan for i in ids], np.float64)
    return v, int(np.isnan(v).sum())


def _summary(res: SelectionResult, df: pl.DataFrame, k: int) -> dict[str, Any]:
    """Counts, thresholds and kept shares per source and per cluster."""
    dec = res.to_frame().with_columns(df["source"].cast(pl.Utf8).alias("source"))
    reasons = dec.with_columns(
        pl.col("reason").str.replace(r"^near_duplicate_of:.*$", "near_duplicate")
    )["reason"].value_counts()
    by_src = (
        dec.group_by("source")
        .agg(pl.len().alias("n"), pl.col("kept").sum().alias("kept"))
        .with_columns((pl.col("kept") / pl.col("n")).alias("kept_share"))
        .sort("source")
    )
    by_cl = (
        dec.group_by("cluster")
        .agg(pl.len().alias("n"), pl.col("kept").sum().alias("kept"))
        .with_columns((pl.col("kept") / pl.col("n")).alias("kept_share"))
        .sort("cluster")
    )
    fin = lambda x: None if x is None or not math.isfinite(x) else float(x)  # noqa: E731
    return {
        "n_input": df.height,
        "n_kept": res.n_kept,
        "n_excluded": df.height - res.n_kept,
        "n_requested": res.n_requested,
        "n_target": int(sum(r == "target" for r in res.reason)),
        "reasons": dict(zip(reasons["reason"].to_list(), reasons["count"].to_list())),
        "clusters": k,
        "floor_frac": res.floor_frac,
        "global_threshold": fin(res.global_threshold),
        "cluster_floor": {str(c): f for c, f in res.cluster_floor.items()},
        "cluster_threshold": {str(c): fin(t) for c, t in res.cluster_threshold.items()},
        "by_source": by_src.to_dicts(),
        "by_cluster": by_cl.to_dicts(),
        "dedup": res.dedup,
        "warnings": [*res.alerts, *res.warnings],
    }


def _prune_sources(
    args: PruneArgs,
    df: pl.DataFrame,
    values: np.ndarray,
    is_target: np.ndarray,
    keep: float,
    out: Path,
    ext: str,
    run_dir: Path,
    target: str,
) -> Path:
    """`--by source`: keep or drop whole sources by their mean example value."""
    from curation.atomic import atomic_write_text
    from curation.corpus import write_corpus
    from curation.source_prune import prune_by_source, write_source_report

    kept, reason, table = prune_by_source(df, values, is_target, keep, seed=args.seed)
    mask = pl.Series(kept)
    write_corpus(df.filter(mask), out / f"kept{ext}")
    excl = df.with_columns(
        pl.Series("reason", reason, pl.Utf8), pl.Series("value", values, pl.Float64)
    ).filter(~mask)
    write_table(excl.with_columns(pl.col("value").fill_nan(None)), out / f"excluded{ext}")
    summary = {
        "by": "source",
        "keep": keep,
        "n_docs": df.height,
        "n_kept": int(kept.sum()),
        "sources": table.to_dicts(),
        "scores": str(run_dir),
        "target": str(target),
        "estimator": args.estimator,
    }
    write_source_report(out, table, summary)
    payload = {"args": asdict(args), "summary": summary}
    atomic_write_text(out / "prune.json", json.dumps(payload, indent=2, default=str))
    return out


def run_prune(args: PruneArgs) -> Path:
    """Score (unless --scores), embed, cluster, select and write kept/excluded/report files."""
    from curation.atomic import atomic_write_text
    from curation.cluster import default_k, spherical_kmeans
    from curation.corpus import read_corpus, write_corpus
    from curation.embed import embed_run, prepare_for_similarity, run_token_ids
    from curation.prune_report import write_prune_report
    from curation.selection import token_shingles

    keep = validate_keep(args.keep)
    if args.by not in ("row", "source"):
        raise UsageError(f"--by must be 'row' or 'source', got {args.by!r}")
    if not 0 < args.target_frac < 1:
        raise UsageError(f"--target-frac must be in (0, 1), got {args.target_frac!r}")
    corpus_path = Path(args.corpus)
    data = read_corpus(corpus_path)
    df = data.df.with_columns(pl.col("id").cast(pl.Utf8))
    n = df.height
    if n == 0:
        raise UsageError(f"{corpus_path} holds no documents; nothing to prune")
    if args.clusters is not None and args.clusters > n:
        raise UsageError(
            f"--clusters {args.clusters} is more than the {n} documents in {corpus_path.name}; "
            "pass a smaller --clusters (or leave it out for the default rule)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ext = _ext(corpus_path)
    # A previous run's outputs go first: none of them may outlive a failed rerun.
    for stale in (
        "prune.json",
        f"kept.{ext}",
        f"excluded.{ext}",
        "prune_report.md",
        "prune_report.html",
    ):
        (out / stale).unlink(missing_ok=True)
    ids = df["id"].to_list()

    target = args.target or (_run_target(Path(args.scores)) if args.scores else None)
    if target is None:
        is_target = holdout_target(n, args.target_frac, args.seed)
        if not is_target.any():
            raise UsageError(
                f"{corpus_path.name} has {n} documents, too few to hold out a target; pass --target"
            )
        target = str(out / f"target{ext}")
        write_corpus(df.filter(pl.Series(is_target)), target)
    else:
        tids = _target_ids(target)
        is_target = np.array([i in tids for i in ids], bool)

    run_dir = Path(args.scores) if args.scores else _score(args, df, is_target, target, out)
    values, _ = _load_values(run_dir, ids, args.estimator)
    values[is_target] = np.nan
    n_unscored = int(np.isnan(values[~is_target]).sum())
    if n_unscored:
        print(f"warning: {n_unscored} documents have no {args.estimator} value; ranked lowest")
    if args.by == "source":
        return _prune_sources(args, df, values, is_target, keep, out, ext, run_dir, target)
    emb = prepare_for_similarity(embed_run(run_dir, df, progress=args.progress))
    k = args.clusters or default_k(int((~is_target).sum()) or n)
    labels, _ = spherical_kmeans(emb, k, seed=args.seed)
    shingles = None
    if args.dedup_eps > 0:
        shingles = [token_shingles(t) for t in run_token_ids(run_dir, df)]
    res = select(
        ids,
        values,
        labels,
        emb,
        keep,
        args.floor,
        args.dedup_eps,
        is_target,
        shingles=shingles,
        dedup_jaccard=args.dedup_jaccard,
        max_dedup_frac=args.max_dedup_frac,
    )
    for w in res.alerts:
        print(f"\n*** {w} ***\n")
    for w in res.warnings:
        print(f"warning: {w}")

    kept_mask = pl.Series(res.kept)
    write_corpus(df.filter(kept_mask), out / f"kept{ext}")
    excl = df.with_columns(
        pl.Series("reason", res.reason, pl.Utf8), pl.Series("value", values, pl.Float64)
    ).filter(~kept_mask)
    excl = excl.with_columns(pl.col("value").fill_nan(None))
    write_table(excl, out / f"excluded{ext}")

    summary = _summary(res, df, k)
    summary.update(
        scores=str(run_dir),
        target=str(target),
        estimator=args.estimator,
        n_unscored=n_unscored,
    )
    write_prune_report(out, df, res, emb, summary)
    payload = {"args": asdict(args), "summary": summary}
    atomic_write_text(out / "prune.json", json.dumps(payload, indent=2, default=str))
    return out
