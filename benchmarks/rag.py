"""RAG benchmark: do answer-bearing retrieval sources rank first and contradicting ones last?

    python -m benchmarks.rag [--per-source 200] [--seed 0] [--scores RUN_DIR]

Builds the RAG corpus (curation/rag_corpus.py), holds out 10% of the answer-bearing rows
(`kb-answer`) as the target (as data_manifests/rag.yaml does), runs one scored training with the
manifest's settings (or reads `--scores RUN_DIR`, e.g. the `score-*` folder of
`adamshap curate data_manifests/rag.yaml`) and ranks the retrieval sources by mean example value
with a 95% bootstrap CI. Checks reported (not asserted): kb-answer first, kb-contradict last.
Writes benchmarks/results/rag.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from curation.run_dir import RunDir

from .instruct import split

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET = "kb-answer"
ESTIMATORS = ("adam2", "adam-loo", "adam", "sgd")
SETTINGS = dict(
    preset="tiny",
    seq_len=160,
    vocab_size=4096,
    epochs=2,
    warm_start_steps=40,
    batch_size=16,
    target_batch_size=16,
    lr=1e-3,
)


def score(cfg: argparse.Namespace, work: Path) -> Path:
    """Build the RAG corpus, write corpus and target, run the scored training; return the run."""
    from curation.corpus import write_corpus
    from curation.rag_corpus import rag_frame
    from curation.scoring_run import ScoreArgs, run_scoring

    train, target = split(rag_frame(cfg.per_source, cfg.seed), 0.1, cfg.seed, source=TARGET)
    work.mkdir(parents=True, exist_ok=True)
    args = ScoreArgs(
        corpus=str(write_corpus(train, work / "corpus.jsonl")),
        target=str(write_corpus(target, work / "target.jsonl")),
        out=str(work / "scores"),
        estimators=ESTIMATORS,
        seed=cfg.seed,
        progress=False,
        **SETTINGS,
    )
    return run_scoring(args)


def rank_sources(run_dir: Path) -> dict[str, Any]:
    """Per estimator: retrieval sources ranked by mean value with bootstrap CIs, and the checks."""
    from curation.bootstrap import LEVEL, N_BOOT, source_bootstrap

    by_ex = pl.read_parquet(RunDir(run_dir).values_by_example)
    out: dict[str, Any] = {"n_boot": N_BOOT, "level": LEVEL, "estimators": {}}
    for col in [c for c in by_ex.columns if c.startswith("value_")]:
        rows = source_bootstrap(by_ex, col).to_dicts()
        out["estimators"][col.removeprefix("value_")] = {
            "table": rows,
            "answer_first": rows[0]["source"] == TARGET,
            "contradict_last": rows[-1]["source"] == "kb-contradict",
        }
    return out


def to_markdown(res: dict[str, Any]) -> str:
    """Markdown tables of a results dict."""
    lines = [
        "# RAG benchmark",
        "",
        f"{res['per_source']} rows per retrieval source (`kb-answer`, `kb-irrelevant`, "
        f"`kb-contradict`), target = held-out 10% of `kb-answer` ({res['n_target']} rows), "
        f"training {res['n_train']} rows; {res['settings']}; seed {res['seed']}. Cell: mean "
        f"example value with its {res['ranking']['level']:.0%} percentile bootstrap CI over the "
        f"source's examples. Scores: {res['scores_from']}.",
        "",
    ]
    for est, r in res["ranking"]["estimators"].items():
        lines += [
            f"#### {est}",
            "",
            f"answer-bearing first: **{r['answer_first']}**; contradicting last: "
            f"**{r['contradict_last']}**",
            "",
            "| rank | source | n | mean | 95% CI | frac < 0 |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['rank']} | {t['source']} | {t['n_examples']} | {t['mean']:.4g} | "
            f"[{t['ci_low']:.4g}, {t['ci_high']:.4g}] | {t['frac_negative']:.2f} |"
            for t in r["table"]
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write benchmarks/results/rag.{json,md}."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rag")
    p.add_argument("--per-source", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", metavar="RUN_DIR", help="a finished run with these settings")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-rag"))
    cfg = p.parse_args(argv)
    t0 = time.time()
    run_dir = Path(cfg.scores) if cfg.scores else score(cfg, Path(cfg.work))
    took = round(time.time() - t0, 1)
    rec = RunDir(run_dir).read_run_json()
    res = {
        "per_source": cfg.per_source,
        "seed": cfg.seed,
        "n_train": pl.read_parquet(RunDir(run_dir).examples).height,
        "n_target": pl.read_ndjson(rec["args"]["target"]).height,
        "settings": ", ".join(f"{k} {rec['args'][k]}" for k in SETTINGS),
        "scores_from": f"reused {run_dir}" if cfg.scores else f"scored here in {took} s",
        "ranking": rank_sources(run_dir),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rag.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "rag.md").write_text(to_markdown(res) + "\n")
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
