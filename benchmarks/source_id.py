"""Source identification benchmark (docs/method.md §8): can the values name the source the target came from?

    python -m benchmarks.source_id [--quick] [--corpus PATH] [--per-source N] [--target-docs N]

A seeded sample of `--per-source` documents from each of the six sources of a corpus built with
`adamshap corpus build demo --per-source (per-source + target-docs)` (or `--corpus PATH`) forms the
training mixture (CPU budget: 200 per source by default, 40 with --quick); for each source,
`--target-docs` further held-out documents of that source are the target set. One shared warm start
(plain AdamW on the mixture, no target involved) gives the proxy; each target then gets one scored
epoch over the whole mixture. Metrics per estimator (`sgd`, `adam`, `adam2`):
- top-1 accuracy: the source with the highest mean value per example is the target's source,
  over the six targets;
- normalised recall@k: with k = number of training documents of the target source, the fraction
  r of the k highest-valued examples that come from it, rescaled so that random ranking scores 0
  and perfect ranking 1: (r - k/N) / (1 - k/N).
Writes benchmarks/results/source_id.{json,md} (source_id_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from curation.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ESTIMATORS = ("adam2", "adam", "sgd")
# what `adamshap prune` ranks by default: checkpoint values (curation/checkpoint_values.py)
RANKINGS = ("ckpt", *ESTIMATORS)


def sample_split(
    df: pl.DataFrame, per_source: int, target_docs: int, seed: int
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """Seeded per-source sample: training mixture and one disjoint held-out target set per source."""
    rng = random.Random(seed)
    train, targets = [], {}
    for src in sorted(df["source"].unique().to_list()):
        sub = df.filter(pl.col("source") == src).sort("id")
        idx = list(range(sub.height))
        rng.shuffle(idx)
        need = per_source + target_docs
        if len(idx) < need:
            raise SystemExit(f"source {src} has {len(idx)} docs, need {need}")
        train.append(sub[idx[:per_source]])
        targets[src] = sub[idx[per_source:need]]
    return pl.concat(train), targets


def source_metrics(run_dir: Path, target: str, est: str) -> dict[str, Any]:
    """Ranking of sources by mean value, top-1 hit and normalised recall@k for one run and estimator."""
    ex = pl.read_parquet(RunDir(run_dir).values_by_example)
    if est == "ckpt":  # checkpoint values are per document: mean over each source's documents
        by_src = (
            ex.group_by("source")
            .agg(pl.col("value_ckpt").mean().alias("mean_ckpt"))
            .sort(["mean_ckpt", "source"], descending=[True, False])
        )
    else:
        by_src = pl.read_parquet(RunDir(run_dir).values_by_source).sort(
            f"mean_{est}", descending=True
        )
    ranking = by_src["source"].to_list()
    k = ex.filter(pl.col("source") == target).height
    top = ex.sort([f"value_{est}", "id"], descending=[True, False]).head(k)
    recall = top.filter(pl.col("source") == target).height / k
    base = k / ex.height
    return {
        "ranking": ranking,
        "mean_value": dict(zip(ranking, by_src[f"mean_{est}"].to_list())),
        "top1": ranking[0] == target,
        "target_rank": ranking.index(target) + 1,
        "recall_at_k": recall,
        "normalised_recall_at_k": (recall - base) / (1 - base),
        "k": k,
    }


def _write_jsonl(df: pl.DataFrame, path: Path) -> str:
    df.select("id", "source", "text").write_ndjson(path)
    return str(path)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return the results dict."""
    from curation.corpus import read_corpus
    from curation.scoring_run import ScoreArgs, run_scoring

    t0 = time.time()
    df = read_corpus(cfg.corpus).df
    train, targets = sample_split(df, cfg.per_source, cfg.target_docs, cfg.seed)
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="source_id-"))
    work.mkdir(parents=True, exist_ok=True)
    train_path = _write_jsonl(train, work / "train.jsonl")
    tpaths = {s: _write_jsonl(t, work / f"target-{s}.jsonl") for s, t in targets.items()}
    common = dict(
        corpus=train_path,
        preset=cfg.preset,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        target_batch_size=cfg.target_batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        vocab_size=cfg.vocab_size,
        checkpoint_every=10_000,
        progress=cfg.progress,
    )
    # Shared warm start: plain AdamW on the mixture only (epochs=0: no scoring).
    first = sorted(tpaths)[0]
    warm = run_scoring(
        ScoreArgs(
            target=tpaths[first],
            out=str(work / "warm"),
            epochs=0,
            warm_start_steps=cfg.warm_start_steps,
            **common,
        )
    )
    warm_model = str(RunDir(warm).final_model)
    per_target: dict[str, Any] = {}
    for src, tpath in sorted(tpaths.items()):
        t1 = time.time()
        out = run_scoring(
            ScoreArgs(
                target=tpath,
                out=str(work / f"score-{src}"),
                model=warm_model,
                tokenizer=warm_model,
                epochs=cfg.epochs,
                warm_start_steps=0,
                estimators=ESTIMATORS,
                snapshots=3,
                **common,
            )
        )
        per_target[src] = {e: source_metrics(out, src, e) for e in RANKINGS}
        per_target[src]["seconds"] = round(time.time() - t1, 1)
        print(src, {e: per_target[src][e]["ranking"][:3] for e in RANKINGS}, flush=True)
    summary = {
        e: {
            "top1_accuracy": sum(per_target[s][e]["top1"] for s in per_target) / len(per_target),
            "top1_hits": sum(per_target[s][e]["top1"] for s in per_target),
            "mean_normalised_recall_at_k": sum(
                per_target[s][e]["normalised_recall_at_k"] for s in per_target
            )
            / len(per_target),
            "mean_target_rank": sum(per_target[s][e]["target_rank"] for s in per_target)
            / len(per_target),
        }
        for e in RANKINGS
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    return {
        "benchmark": "source_id",
        "config": config,
        # the checkpoint values' sketch size (the product default; results before it was
        # recorded used 16)
        "sketch_dim": ScoreArgs.sketch_dim,
        "n_train_docs": train.height,
        "summary": summary,
        "per_target": per_target,
        "seconds": round(time.time() - t0, 1),
        "command": "python -m benchmarks.source_id" + (" --quick" if cfg.quick else ""),
    }


def to_markdown(res: dict[str, Any]) -> str:
    """Markdown tables of a results dict."""
    c = res["config"]
    lines = [
        "# Source identification",
        "",
        f"`{res['command']}`: {c['per_source']} training docs per source ({res['n_train_docs']} in all), "
        f"{c['target_docs']} held-out target docs per source, preset `{c['preset']}`, seq_len "
        f"{c['seq_len']}, batch {c['batch_size']}, target batch {c['target_batch_size']}, "
        f"{c['warm_start_steps']} shared warm-start steps, {c['epochs']} scored epoch(s), lr {c['lr']}, "
        f"seed {c['seed']}; checkpoint values at sketch {res.get('sketch_dim', 16)}; "
        f"{res['seconds']:.0f} s wall-clock on a shared 2-core CPU.",
        "",
        "| estimator | top-1 accuracy | mean normalised recall@k | mean rank of target source |",
        "|---|---|---|---|",
    ]
    for e, s in res["summary"].items():
        lines.append(
            f"| `{e}` | {s['top1_hits']}/{len(res['per_target'])} | "
            f"{s['mean_normalised_recall_at_k']:.3f} | {s['mean_target_rank']:.2f} |"
        )
    lines += [
        "",
        "Per target (top source by mean value; normalised recall@k):",
        "",
        "| target | " + " | ".join(f"`{e}`" for e in res["summary"]) + " |",
        "|---|" + "---|" * len(res["summary"]),
    ]
    for src, r in res["per_target"].items():
        cells = [
            f"{r[e]['ranking'][0]} ({r[e]['normalised_recall_at_k']:.2f})" for e in res["summary"]
        ]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "normalised recall@k = (r - k/N)/(1 - k/N), r = fraction of the k top-valued training "
        "examples from the target source, k = its number of training docs (random = 0, perfect = 1).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.source_id", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--corpus", type=Path, default=None, help="default: built with `adamshap corpus build demo`"
    )
    p.add_argument("--quick", action="store_true", help="small sample, for CI")
    p.add_argument("--per-source", type=int, default=None)
    p.add_argument("--target-docs", type=int, default=None)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--target-batch-size", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--warm-start-steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None, help="run folders (default: a temp dir)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--progress", action="store_true")
    cfg = p.parse_args(argv)
    cfg.per_source = cfg.per_source or (40 if cfg.quick else 200)
    cfg.target_docs = cfg.target_docs or (16 if cfg.quick else 48)
    if cfg.corpus is None:
        from benchmarks.common import build_corpus

        cfg.corpus = build_corpus(cfg.per_source + cfg.target_docs, cfg.seed)
    if cfg.warm_start_steps is None:
        cfg.warm_start_steps = 20 if cfg.quick else 250
    if cfg.quick:
        cfg.vocab_size = min(cfg.vocab_size, 512)
    res = run(cfg)
    from curation.atomic import atomic_write_text

    stem = "source_id_quick" if cfg.quick else "source_id"
    atomic_write_text(cfg.out_dir / f"{stem}.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(cfg.out_dir / f"{stem}.md", to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
