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
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from adamshap_core.estimators import preferred_order
from curation.errors import UsageError
from curation.run_dir import (
    COMPLETE_MARKER,
    DONE_FILE,
    OUTPUT_EXTS,
    OUTPUT_STEMS,
    REPORT_FILES,
    PruneDir,
    RunDir,
)
from curation.selection import SelectionResult, select
from curation.settings import PRUNE_BY, RANK_BY, check_choice, check_settings, validate_keep

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
    # None: checkpoint values (`ckpt`) when the run has them, else the first in-run estimator
    # it has (a run scored with --snapshots 0, or by an older version); the choice is recorded
    estimator: str | None = None
    # cluster floors: None = half the keep rate (a kept share of every FAISS cluster, positive
    # values only); 0 turns them off. In the pruning benchmark they did not bind (same kept set)
    floor: float | None = None
    seed: int = 0
    target_frac: float = 0.05
    fields: dict[str, str] | None = None
    progress: bool = True
    device: str = "cpu"  # auto | cpu | cuda | cuda:N (curation/devices.py)

    def __post_init__(self) -> None:
        # stored absolute: prune.json and a later `--scores` read mean the same files from any cwd
        for name in ("corpus", "out", "scores", "target"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, os.path.abspath(os.fspath(v)))

    by: str = "row"  # "source": keep or drop whole sources (curation/source_prune.py)
    # quality rules before value ranking (curation/quality.py): failing rows are excluded with
    # reason quality:<rule>; off ranks every row by value alone
    quality: bool = True
    min_chars: int = 50
    # what fills the budget after the rules: "value" (the estimator's values), "perplexity" (the
    # proxy's lowest mean token loss first), "value+perplexity" (mean of the two ranks), or
    # "auto": perplexity when the target was held out of this corpus (no --target, plain text),
    # else value (benchmarks/results/pruning_*.md; README "Pruning" for why not the mix)
    rank_by: str = "auto"

    def validate(self) -> float:
        """UsageError for a setting that cannot work (the one check of each); the keep fraction.

        Settings that need the data (`clusters` against the corpus size, `rank_by` against
        the rows' kind) are checked where the data is read, in run_prune.
        """
        keep = validate_keep(self.keep)
        check_settings("prune", self)  # the numeric settings: curation/settings.py RULES
        check_choice("--by", self.by, PRUNE_BY)
        validate_rank_by(self.rank_by)
        return keep


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


def check_inputs_apart(out: Path, *inputs: str | Path | None) -> None:
    """UsageError when an input is one of the files prune writes in `out` (it would be lost)."""
    names = PruneDir(out).output_names()
    outputs = {os.path.realpath(out / n) for n in names}
    for path in inputs:
        if path is not None and os.path.realpath(path) in outputs:
            raise UsageError(
                f"{path} is one of the files prune writes in --out {out}; it would be deleted "
                "or overwritten: choose another --out"
            )


def clear_outputs(out: Path) -> None:
    """Delete a previous run's outputs (every format), completion marker first.

    Called before any work, so a rerun that fails never leaves an earlier kept/excluded pair
    looking complete beside nothing (or beside half of a new pair).
    """
    (out / DONE_FILE).unlink(missing_ok=True)
    for stem in OUTPUT_STEMS:
        for ext in OUTPUT_EXTS:
            (out / f"{stem}{ext}").unlink(missing_ok=True)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def input_rows(path: Path, n: int) -> list[dict[str, Any]] | pl.DataFrame:
    """The input's rows with every original field, in reading order.

    Parquet inputs come back as the original table (types kept); JSONL and datasets folders as
    a list of records. Used to write kept/excluded with all of the input's columns.
    """
    from curation.corpus import _iter_raw, corpus_format

    fmt = corpus_format(path)
    if fmt == "parquet":
        table = pl.read_parquet(path)
    else:
        recs = [rec for _, rec, _, _ in _iter_raw(path, fmt) if rec is not None]
        table = recs if fmt != "hf" else pl.from_dicts(recs, infer_schema_length=None)
    if len(table) != n:
        raise UsageError(f"{path} changed while it was being pruned; run prune again")
    return table


def _with_decision(rec: dict[str, Any], reason: str, value: float | None) -> dict[str, Any]:
    """An input record plus `reason` and `value` (an input field of that name -> input_<name>)."""
    out = {(f"input_{k}" if k in ("reason", "value") else k): v for k, v in rec.items()}
    out["reason"], out["value"] = reason, value
    return out


def write_outputs(
    folder: Path,
    rows: list[dict[str, Any]] | pl.DataFrame,
    kept: np.ndarray,
    reasons: list[str],
    values: np.ndarray,
    ext: str,
) -> tuple[Path, Path]:
    """Write kept<ext> (the input's rows, every field) and excluded<ext> (plus reason, value)."""
    kept = np.asarray(kept, bool)
    vals = [None if not math.isfinite(float(v)) else float(v) for v in values]
    if isinstance(rows, pl.DataFrame):
        ren = {c: f"input_{c}" for c in ("reason", "value") if c in rows.columns}
        excl = rows.rename(ren).with_columns(
            pl.Series("reason", reasons, pl.Utf8), pl.Series("value", vals, pl.Float64)
        )
        mask = pl.Series(kept)
        kept_path = write_table(rows.filter(mask), PruneDir(folder).kept(ext))
        excl_path = write_table(excl.filter(~mask), PruneDir(folder).excluded(ext))
        return kept_path, excl_path
    keep_recs = [r for r, k in zip(rows, kept) if k]
    excl_recs = [
        _with_decision(r, why, v) for r, k, why, v in zip(rows, kept, reasons, vals) if not k
    ]
    return (
        write_records(keep_recs, PruneDir(folder).kept(ext)),
        write_records(excl_recs, PruneDir(folder).excluded(ext)),
    )


def write_records(records: list[dict[str, Any]], path: Path) -> Path:
    """Write dict records as JSONL(.gz) (or Parquet), atomically, fields as given."""
    import gzip

    from curation.atomic import atomic_path

    if path.name.endswith(".parquet"):
        return write_table(pl.from_dicts(records, infer_schema_length=None), path)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as g:
                g.write(data)
        else:
            tmp.write_bytes(data)
    return path


def holdout_target(
    n: int, frac: float, seed: int, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Seeded random held-out mask: max(16, round(frac*n)) docs, at most half the corpus.

    With `eligible` (e.g. the rows that pass the quality rules) the sample is drawn from those
    rows only, so junk in the corpus is not held out as the target it is valued against.
    """
    m = min(max(TARGET_MIN, round(frac * n)), n // 2)
    mask = np.zeros(n, bool)
    pool = np.arange(n) if eligible is None else np.flatnonzero(eligible)
    m = min(m, len(pool) // 2) if eligible is not None and len(pool) < n else m
    if m > 0:
        mask[pool[np.random.default_rng(seed).choice(len(pool), size=m, replace=False)]] = True
    return mask


def _quality_rules(args: PruneArgs) -> Any:
    """The quality thresholds of this run (curation.quality.QualityRules)."""
    from curation.quality import QualityRules

    args.validate()  # min_chars among the rest
    return QualityRules(min_chars=args.min_chars)


def _plain_texts(df: pl.DataFrame) -> list[str] | None:
    """The documents' texts when the quality rules apply (plain text rows), else None."""
    if "prompt" in df.columns and "response" in df.columns:
        return None  # instruction / RAG rows: judged by value alone
    return ["" if t is None else str(t) for t in df["text"].to_list()]


def _finite(x: float) -> float | None:
    """x, or None where it is NaN/inf (prune.json stays comparable and strict JSON)."""
    return float(x) if math.isfinite(x) else None


def _sig4(x: float | None) -> float | None:
    """x to 4 significant digits (a reported figure, not one a decision is taken on)."""
    return None if x is None else float(f"{x:.4g}")


def validate_rank_by(rank_by: object) -> str:
    """`rank_by` when it is one of RANK_BY, else UsageError (the one place this is checked)."""
    return check_choice("--rank-by", rank_by, RANK_BY)


def resolve_rank_by(rank_by: str, held_out: bool, plain: bool) -> str:
    """What fills the kept budget after the quality rules (RANK_BY, 'auto' resolved)."""
    validate_rank_by(rank_by)
    if rank_by != "value" and rank_by != "auto" and not plain:
        raise UsageError(f"--rank-by {rank_by} needs plain-text rows (no prompt/response columns)")
    if rank_by == "auto":
        if not plain:
            return "value"
        return "perplexity" if held_out else "value"
    return rank_by


def ranking_scores(
    rank_by: str,
    values: np.ndarray,
    losses: np.ndarray | None,
    quality: list[str] | None,
    dsir: np.ndarray | None = None,
) -> np.ndarray:
    """The score `select` ranks by (higher kept first; NaN for target rows). Ranks are taken
    among the rows that pass the quality rules, the rows that compete for the budget."""
    from curation.quality import mean_rank

    if rank_by == "value":
        return values
    neg = -np.asarray(losses, np.float64) if losses is not None else None
    if rank_by == "perplexity":
        return np.where(np.isnan(values), np.nan, neg)
    other = dsir if rank_by == "value+dsir" else neg
    failed = np.array([bool(q) for q in quality]) if quality else np.zeros(len(values), bool)
    return mean_rank(np.where(failed, np.nan, values), other)


def _target_texts(
    df: pl.DataFrame, is_target: np.ndarray, target_df: pl.DataFrame | None
) -> tuple[list[str], list[str]]:
    """(the target's texts inside the corpus, those of a separate --target file that are not)."""
    texts = _plain_texts(df) or []
    inside_texts = [t for t, m in zip(texts, is_target) if m]
    extra: list[str] = []
    if texts and target_df is not None and "text" in target_df.columns:
        inside = set(df["id"].to_list())
        extra = [
            "" if t is None else str(t)
            for i, t in zip(target_df["id"].cast(pl.Utf8), target_df["text"])
            if i not in inside
        ]
    return inside_texts, extra


def _quality(
    args: PruneArgs,
    df: pl.DataFrame,
    run_dir: Path,
    need_losses: bool,
    is_target: np.ndarray,
    target_df: pl.DataFrame | None,
) -> tuple[list[str] | None, np.ndarray | None, dict]:
    """Per-row quality reasons ('' = passes), the proxy's per-row losses, and a summary.

    The target's rows (in the corpus, or in a separate --target file) are judged too: a rule
    the target fails at least as often as the corpus is not applied (curation.quality)."""
    from dataclasses import asdict as _asdict

    from curation.proxy_loss import run_losses_and_order_gains
    from curation.quality import check_quality

    texts = _plain_texts(df)
    extra = _target_texts(df, is_target, target_df)[1]
    losses = gains = None
    if texts is not None and (args.quality or need_losses):
        losses, gains = run_losses_and_order_gains(
            run_dir, texts + extra, device=args.device, seed=args.seed
        )
        losses = losses[: len(texts)]
    if not args.quality or texts is None:
        why = "off (--quality off)" if not args.quality else "off (instruction/RAG rows)"
        return None, losses, {"enabled": False, "note": why}
    rules = _quality_rules(args)
    target = np.concatenate([np.asarray(is_target, bool), np.ones(len(extra), bool)])
    res = check_quality(texts + extra, rules, gains, target=target)
    gains = gains[: len(texts)]
    reasons = res.reasons[: len(texts)]
    flagged = {r: sum(x == r for x in reasons) for r in res.counts()}
    return (
        reasons,
        losses,
        {
            "enabled": True,
            "rules": _asdict(rules),
            "flagged": flagged,
            "n_flagged": int(sum(bool(x) for x in reasons)),
            "not_applied": res.disabled,
            # 4 significant digits: the proxy's float32 forward passes differ in the 6th digit
            # between runs on a loaded CPU (a fresh-clone CI saw 0.06379354 vs 0.06379330), and
            # prune.json of the same command and seed must be identical
            "order_gain_threshold": _sig4(_finite(res.order_gain_threshold)),
            "order_gain_median": _sig4(_finite(float(np.nanmedian(gains)))) if len(gains) else None,
            "dominant_script": res.dominant_script,
            "function_words": res.function_words[:10],
        },
    )


def _run_target(run_dir: Path) -> str | None:
    """Target path recorded in a scoring run's run.json, if any (refused when it is gone)."""
    try:
        args = RunDir(run_dir).run_args()
    except (OSError, ValueError):
        return None
    t = args.get("target")
    if not t:
        return None
    if not Path(t).is_absolute():  # runs from before paths were stored absolute
        raise UsageError(
            f"{run_dir}/run.json names its target by the relative path {t!r}, which depends on "
            "the directory score ran in; pass the target with --target"
        )
    if not Path(t).exists():
        raise UsageError(
            f"the target {t} recorded in {run_dir}/run.json no longer exists; pass --target"
        )
    return str(t)


def _run_fields(run_dir: Path) -> dict[str, str] | None:
    """Field-name overrides recorded in a scoring run's run.json (they apply to its target)."""
    try:
        f = RunDir(run_dir).read_run_json()["args"].get("fields")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return f if isinstance(f, dict) else None


def _target_ids(path: str, fields: dict[str, str] | None = None) -> set[str]:
    """Ids in a target corpus file."""
    from curation.corpus import FieldMap, read_corpus

    fm = FieldMap(**fields) if fields else FieldMap()
    return set(read_corpus(path, fields=fm).df["id"].cast(pl.Utf8).to_list())


def _score(
    args: PruneArgs,
    df: pl.DataFrame,
    is_target: np.ndarray,
    target: str,
    out: Path,
    target_df: pl.DataFrame | None = None,
) -> Path:
    """Run the scoring stage with defaults on the non-target documents; returns the run dir."""
    from curation.corpus import write_corpus
    from curation.scoring_run import ScoreArgs, run_scoring

    train_path = PruneDir(out).work / f"train{_ext(Path(args.corpus))}"
    write_corpus(df.filter(pl.Series(~is_target)), train_path)
    if args.fields and target_df is not None:  # the scoring run reads canonical field names
        target = str(
            write_corpus(target_df, PruneDir(out).work / f"target{_ext(Path(args.corpus))}")
        )
    score_args = ScoreArgs(
        corpus=str(train_path),
        target=str(target),
        out=str(PruneDir(out).scores.path),
        device=args.device,
    )
    if hasattr(score_args, "seed"):
        score_args.seed = args.seed
    return Path(run_scoring(score_args))


DEFAULT_ESTIMATOR = "ckpt"  # checkpoint values: benchmarks/results/pruning_*.md


def resolve_estimator(run_dir: Path, estimator: str | None) -> tuple[str, str | None]:
    """The estimator to rank by, and a note when the default had to fall back."""
    if estimator is not None:
        return estimator, None
    path = RunDir(run_dir).values_by_example
    try:
        have = set(pl.read_parquet_schema(path))
    except Exception:  # missing or unreadable: _load_values names the problem
        return DEFAULT_ESTIMATOR, None
    if value_column(DEFAULT_ESTIMATOR) in have:
        return DEFAULT_ESTIMATOR, None
    for e in preferred_order():  # the in-run estimators, most preferred first
        if value_column(e) in have:
            return e, (
                f"{run_dir} has no checkpoint values (scored with --snapshots 0, or by an older "
                f"version); ranking by the in-run {e} sum instead"
            )
    return DEFAULT_ESTIMATOR, None


def _load_values(run_dir: Path, ids: list[str], estimator: str) -> tuple[np.ndarray, int]:
    """Per-document values of `estimator` aligned to ids (NaN where unscored), and #missing."""
    path = RunDir(run_dir).values_by_example
    if not RunDir(run_dir).is_complete():
        raise UsageError(
            f"{run_dir} is not a finished scoring run (no {COMPLETE_MARKER} marker): rerun the "
            "same `adamshap score` command to finish it, then prune"
        )
    if not path.exists():
        raise UsageError(f"{path} not found: --scores must be a finished `adamshap score` run dir")
    vals = pl.read_parquet(path)
    col = value_column(estimator)
    if col not in vals.columns:
        have = sorted(c[6:] for c in vals.columns if c.startswith("value_"))
        hint = (
            " (checkpoint values need a run scored with --snapshots >= 1)"
            if estimator == "ckpt"
            else " (propagated values need a run scored with --momentum-window K)"
            if estimator.endswith("_prop")
            else ""
        )
        raise UsageError(
            f"estimator {estimator!r}: no column {col} in {path}{hint}; available: {have}; "
            "pass one of them as --estimator"
        )
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


@dataclass
class _Job:
    """One prune: the corpus as read, where its outputs go, and which rows are the target."""

    corpus_path: Path
    df: pl.DataFrame
    out: Path
    ext: str
    ids: list[str] = field(default_factory=list)
    rows: Any = None  # the input rows as read back for writing (input_rows)
    is_target: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    target: str = ""  # the target's path (written here when it was held out)
    target_df: pl.DataFrame | None = None  # a separate target file's rows
    held_out: bool = False

    @property
    def n(self) -> int:
        return self.df.height


def _prune_sources(
    args: PruneArgs, job: _Job, values: np.ndarray, keep: float, run_dir: Path
) -> Path:
    """`--by source`: keep or drop whole sources by their mean example value."""
    from curation.atomic import atomic_write_text, staged_outputs
    from curation.corpus import write_corpus
    from curation.source_prune import prune_by_source, write_source_report

    df, out, ext = job.df, job.out, job.ext
    kept, reason, table = prune_by_source(df, values, job.is_target, keep, seed=args.seed)
    mask = pl.Series(kept)
    summary = {
        "by": "source",
        "keep": keep,
        "n_docs": df.height,
        "n_kept": int(kept.sum()),
        "sources": table.to_dicts(),
        "scores": str(run_dir),
        "target": str(job.target),
        "estimator": args.estimator,
    }
    payload = {"args": asdict(args), "summary": summary}
    # the same all-or-nothing swap as row pruning: prune.json last, no half-written pair
    with staged_outputs(out, last=(DONE_FILE,)) as stage:
        write_corpus(df.filter(mask), PruneDir(stage).kept(ext))
        excl = df.with_columns(
            pl.Series("reason", reason, pl.Utf8), pl.Series("value", values, pl.Float64)
        ).filter(~mask)
        write_table(
            excl.with_columns(pl.col("value").fill_nan(None)), PruneDir(stage).excluded(ext)
        )
        write_source_report(stage, table, summary)
        atomic_write_text(PruneDir(stage).prune_json, json.dumps(payload, indent=2, default=str))
    return out


def run_prune(args: PruneArgs) -> Path:
    """Score (unless --scores), embed, cluster, select and write kept/excluded/report files.

    The outputs are written into a fresh folder inside OUT_DIR and moved into place only when
    all of them are written (prune.json last); a previous run's outputs are deleted first.
    """
    from curation.devices import resolve_device

    keep = args.validate()
    args.device = resolve_device(args.device)
    job = _open_job(args)
    _choose_target(args, job)
    _check_budget(args, job, keep)
    if job.held_out:
        from curation.corpus import write_corpus

        write_corpus(job.df.filter(pl.Series(job.is_target)), job.target)
    run_dir = (
        Path(args.scores)
        if args.scores
        else _score(args, job.df, job.is_target, job.target, job.out, job.target_df)
    )
    args.estimator, fallback = resolve_estimator(run_dir, args.estimator)
    if fallback:
        print(f"note: {fallback}", file=sys.stderr)
    values, n_unscored = _job_values(args, job, run_dir)
    if args.by == "source":
        return _prune_sources(args, job, values, keep, run_dir)
    return _prune_rows(args, job, values, keep, _Scored(run_dir, fallback, n_unscored))


def _open_job(args: PruneArgs) -> _Job:
    """Read the corpus, check it against --clusters and clear the output folder's old results."""
    from curation.corpus import FieldMap, read_corpus

    corpus_path = Path(args.corpus)
    fields = FieldMap(**args.fields) if args.fields else FieldMap()
    data = read_corpus(corpus_path, fields=fields)
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
    check_inputs_apart(out, args.corpus, args.target)
    out.mkdir(parents=True, exist_ok=True)
    job = _Job(corpus_path, df, out, _ext(corpus_path))
    # A previous run's outputs go first: none of them may outlive a failed rerun.
    clear_outputs(out)
    job.ids = df["id"].to_list()
    job.rows = input_rows(corpus_path, n)
    return job


def _choose_target(args: PruneArgs, job: _Job) -> None:
    """The target: --target, the scoring run's, or a seeded sample held out of the corpus."""
    from curation.corpus import FieldMap, read_corpus

    target = args.target or (_run_target(Path(args.scores)) if args.scores else None)
    job.held_out = target is None
    if target is None:
        eligible = None
        texts = _plain_texts(job.df) if args.quality else None
        if texts is not None:
            from curation.quality import check_quality

            eligible = ~check_quality(texts, _quality_rules(args)).flagged
        job.is_target = holdout_target(job.n, args.target_frac, args.seed, eligible)
        if not job.is_target.any():
            raise UsageError(
                f"{job.corpus_path.name} has {job.n} documents, too few to hold out a target; "
                "pass --target"
            )
        job.target = str(PruneDir(job.out).target(job.ext))
        return
    tfields = args.fields if args.target else _run_fields(Path(args.scores or ""))
    tfm = FieldMap(**tfields) if tfields else FieldMap()
    job.target = target
    job.target_df = read_corpus(target, fields=tfm).df
    tids = set(job.target_df["id"].cast(pl.Utf8).to_list())
    job.is_target = np.array([i in tids for i in job.ids], bool)


def _check_budget(args: PruneArgs, job: _Job, keep: float) -> None:
    """UsageError when --keep leaves no training document once the target is kept."""
    n, n_target = job.n, int(job.is_target.sum())
    if round(keep * n) - n_target <= 0:
        what = f"the {n_target} target documents in it" if n_target else "nothing"
        raise UsageError(
            f"--keep {args.keep:g} of the {n} documents of {job.corpus_path.name} keeps "
            f"{round(keep * n)}, which leaves no training document kept ({what}); "
            "raise --keep"
        )


def _job_values(args: PruneArgs, job: _Job, run_dir: Path) -> tuple[np.ndarray, int]:
    """Each row's value (NaN for target rows); UsageError when a training row has none."""
    values, _ = _load_values(run_dir, job.ids, args.estimator)
    values[job.is_target] = np.nan
    unscored = np.isnan(values) & ~job.is_target
    n_unscored = int(unscored.sum())
    if n_unscored:
        example = ", ".join(repr(job.ids[i]) for i in np.flatnonzero(unscored)[:3])
        raise UsageError(
            f"{n_unscored} of the {job.n - int(job.is_target.sum())} documents of "
            f"{job.corpus_path.name} have no {args.estimator} value in {run_dir} (e.g. {example}):"
            " the scores are from another corpus. Score this corpus (or leave out --scores to "
            "score it here)"
        )
    return values, n_unscored


@dataclass
class _Scored:
    """Where the values came from (prune.json's summary)."""

    run_dir: Path
    fallback: str | None
    n_unscored: int


def _prune_rows(
    args: PruneArgs, job: _Job, values: np.ndarray, keep: float, scored: _Scored
) -> Path:
    """`--by row`: quality rules, then the ranking under cluster quotas and near-duplicates."""
    from curation.atomic import atomic_write_text, staged_outputs
    from curation.prune_report import write_prune_report

    res, emb, k, rank_by, quality_summary = _select_rows(args, job, values, keep, scored.run_dir)
    for w in res.alerts:
        print(f"\n*** {w} ***\n")
    for w in res.warnings:
        print(f"warning: {w}")
    if not (np.asarray(res.kept, bool) & ~job.is_target).any():
        raise UsageError(
            f"the selection kept no training document of {job.corpus_path.name}; raise --keep"
        )
    summary = _summary(res, job.df, k)
    summary.update(
        scores=str(scored.run_dir),
        target=str(job.target),
        estimator=args.estimator,
        estimator_note=scored.fallback,
        n_unscored=scored.n_unscored,
        quality=quality_summary,
        ranked_by={
            "perplexity": "perplexity (the proxy's mean token loss, lowest first)",
            "value": f"value ({args.estimator})",
            "value+perplexity": f"value+perplexity (mean of the {args.estimator} value rank and "
            "the proxy-loss rank)",
            "value+dsir": f"value+dsir (mean of the {args.estimator} value rank and the rank of "
            "the DSIR hashed-n-gram importance against the target)",
        }[rank_by],
    )
    with staged_outputs(job.out, last=(DONE_FILE,)) as stage:
        kept = np.asarray(res.kept, bool)
        write_outputs(stage, job.rows, kept, list(res.reason), values, job.ext)
        write_prune_report(stage, job.df, res, emb, summary)
        payload = {"args": asdict(args), "summary": summary}
        atomic_write_text(PruneDir(stage).prune_json, json.dumps(payload, indent=2, default=str))
    return job.out


def _select_rows(args: PruneArgs, job: _Job, values: np.ndarray, keep: float, run_dir: Path):
    """Embed, cluster, apply the quality rules and select: (result, emb, k, rank_by, quality)."""
    from curation.cluster import default_k, spherical_kmeans
    from curation.devices import faiss_gpu
    from curation.embed import embed_run, prepare_for_similarity, run_token_ids
    from curation.selection import token_shingles

    df, is_target = job.df, job.is_target
    emb = prepare_for_similarity(embed_run(run_dir, df, progress=args.progress, device=args.device))
    k = args.clusters or default_k(int((~is_target).sum()) or job.n)
    labels, _ = spherical_kmeans(emb, k, seed=args.seed, gpu=faiss_gpu(args.device))
    shingles = None
    if args.dedup_eps > 0:
        shingles = [token_shingles(t) for t in run_token_ids(run_dir, df)]
    rank_by = resolve_rank_by(args.rank_by, job.held_out, _plain_texts(df) is not None)
    quality, losses, quality_summary = _quality(
        args, df, run_dir, rank_by != "value", is_target, job.target_df
    )
    dsir = None
    if rank_by == "value+dsir":
        from curation.baselines import dsir_scores

        inside, extra = _target_texts(df, is_target, target_df=job.target_df)
        dsir = dsir_scores(_plain_texts(df) or [], inside + extra)
    ranking = ranking_scores(rank_by, values, losses, quality, dsir)
    res = select(
        job.ids,
        ranking,
        labels,
        emb,
        keep,
        args.floor,
        dedup_eps=args.dedup_eps,
        is_target=is_target,
        shingles=shingles,
        dedup_jaccard=args.dedup_jaccard,
        max_dedup_frac=args.max_dedup_frac,
        quality=quality,
    )
    return res, emb, k, rank_by, quality_summary
