"""Instruction benchmark: does the value ranking find the target task and the broken sources?

    python -m benchmarks.instruct [--per-source 200] [--seed 0] [--scores RUN_DIR]

Builds the instruction mixture (curation/instruct_corpus.py), holds out 10% of the
`pydoc-function` task as the target (as data_manifests/instruct.yaml does), runs one scored
training (tiny preset, seq 128, 1 epoch after 60 warm-start steps: the manifest's settings) and
ranks the sources by mean example value, with a 95% bootstrap CI over each source's examples.
`--scores RUN_DIR` reads a finished run with those settings instead of scoring again (e.g. the
`score-*` folder of `adamshap curate data_manifests/instruct.yaml`).

Checks reported (not asserted): the target task's source ranks first; the shuffled-response
source ranks last with a negative mean whose CI excludes zero.

Beside the values, a direct wrong-answer signal (curation/prompt_dependence.py): each training
row's `prompt_gain`, the scoring run's final proxy's response-only loss given another row's
prompt (2 random derangements, averaged) minus that given its own, in nats per response token;
per source its mean with a bootstrap CI. Real pairs should gain, shuffled pairs about nothing.
The source-removal truth these are judged against is `benchmarks.instruct_truth`.
Writes benchmarks/results/instruct.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_TASK = "pydoc-function"
ESTIMATORS = ("adam2", "adam-loo", "adam", "sgd")
SETTINGS = dict(
    preset="tiny",
    seq_len=128,
    vocab_size=4096,
    epochs=1,
    warm_start_steps=60,
    batch_size=16,
    target_batch_size=16,
    lr=1e-3,
)


def split(
    df: pl.DataFrame, fraction: float, seed: int, source: str = TARGET_TASK
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hold out `fraction` of one source's rows (seeded); return (training, target)."""
    ids = sorted(df.filter(pl.col("source") == source)["id"].to_list())
    rng = random.Random(seed)
    held = set(rng.sample(ids, max(1, round(fraction * len(ids)))))
    return df.filter(~pl.col("id").is_in(held)), df.filter(pl.col("id").is_in(held))


def score(cfg: argparse.Namespace, work: Path) -> Path:
    """Build the mixture, write corpus and target, run the scored training; return the run dir."""
    from curation.corpus import write_corpus
    from curation.instruct_corpus import instruct_frame
    from curation.scoring_run import ScoreArgs, run_scoring

    df = instruct_frame(cfg.per_source, cfg.seed)
    train, target = split(df, 0.1, cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(train, work / "corpus.jsonl")
    tgt = write_corpus(target, work / "target.jsonl")
    args = ScoreArgs(
        corpus=str(corpus),
        target=str(tgt),
        out=str(work / "scores"),
        estimators=ESTIMATORS,
        seed=cfg.seed,
        progress=False,
        **SETTINGS,
    )
    return run_scoring(args)


def rank_sources(run_dir: Path) -> dict[str, Any]:
    """Per estimator: sources ranked by mean example value, with bootstrap CIs and the checks."""
    from curation.bootstrap import LEVEL, N_BOOT, source_bootstrap

    by_ex = pl.read_parquet(RunDir(run_dir).values_by_example)
    out: dict[str, Any] = {"n_boot": N_BOOT, "level": LEVEL, "estimators": {}}
    for col in [c for c in by_ex.columns if c.startswith("value_")]:
        est = col.removeprefix("value_")
        table = source_bootstrap(by_ex, col)
        rows = table.to_dicts()
        shuffled = next(r for r in rows if r["source"] == "shuffled")
        out["estimators"][est] = {
            "table": rows,
            "target_first": rows[0]["source"] == TARGET_TASK,
            "target_rank": next(r["rank"] for r in rows if r["source"] == TARGET_TASK),
            "shuffled_last": rows[-1]["source"] == "shuffled",
            "shuffled_rank": shuffled["rank"],
            "shuffled_negative_ci_excludes_zero": shuffled["ci_high"] < 0,
        }
    return out


def prompt_gain_table(run_dir: Path, train: pl.DataFrame, seed: int) -> dict[str, Any]:
    """Per source: mean prompt_gain of its rows with a bootstrap CI, and whether shuffled is lowest."""
    from curation.bootstrap import bootstrap_mean_ci
    from curation.prompt_dependence import run_prompt_gains

    res = run_prompt_gains(
        run_dir, train["prompt"].to_list(), train["response"].to_list(), draws=2, seed=seed
    )
    src = np.asarray(train["source"].to_list())
    by: dict[str, Any] = {}
    for k, s in enumerate(sorted(set(src.tolist()))):
        m = src == s
        lo, hi = bootstrap_mean_ci(res.gain[m], seed=seed + k)
        by[s] = {
            "n": int(m.sum()),
            "mean": float(res.gain[m].mean()),
            "ci_low": lo,
            "ci_high": hi,
            "own_loss": float(res.own_loss[m].mean()),
            "other_loss": float(res.other_loss[:, m].mean()),
            "frac_positive": float((res.gain[m] > 0).mean()),
        }
    order = sorted(by, key=lambda s: by[s]["mean"], reverse=True)
    return {
        "run": str(run_dir),
        "draws": int(res.perms.shape[0]),
        "by_source": by,
        "order": order,
        "shuffled_lowest": order[-1] == "shuffled",
    }


def to_markdown(res: dict[str, Any]) -> str:
    """Markdown tables of a results dict."""
    lines = [
        "# Instruction benchmark",
        "",
        f"Mixture: {res['per_source']} rows per source (five tasks + `shuffled` + `truncated`), "
        f"target = held-out 10% of `{TARGET_TASK}` ({res['n_target']} rows), training "
        f"{res['n_train']} rows; {res['settings']}; seed {res['seed']}. Cell: mean example value "
        f"(summed over the run) with its {res['ranking']['level']:.0%} percentile bootstrap CI "
        f"over the source's examples ({res['ranking']['n_boot']} resamples). Scores: "
        f"{res['scores_from']}.",
        "",
    ]
    for est, r in res["ranking"]["estimators"].items():
        lines += [
            f"#### {est}",
            "",
            f"target source first: **{r['target_first']}** (rank {r['target_rank']}); shuffled "
            f"last: **{r['shuffled_last']}** (rank {r['shuffled_rank']}); shuffled mean < 0 with "
            f"CI excluding 0: **{r['shuffled_negative_ci_excludes_zero']}**",
            "",
            "| rank | source | n | mean | 95% CI | frac < 0 | share |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in r["table"]:
            share = "" if t["share"] is None else f"{t['share']:.3f}"
            lines.append(
                f"| {t['rank']} | {t['source']} | {t['n_examples']} | {t['mean']:.4g} | "
                f"[{t['ci_low']:.4g}, {t['ci_high']:.4g}] | {t['frac_negative']:.2f} | {share} |"
            )
        lines.append("")
    pg = res.get("prompt_gain")
    if pg:
        lines += [
            "#### prompt_gain (a direct wrong-answer signal)",
            "",
            "Per training row: the final proxy's response-only loss given another row's prompt "
            f"({pg['draws']} random derangements over the whole mixture, averaged) minus that given "
            "its own prompt, nats per response token; > 0: the response depends on its prompt. "
            f"Lowest: `{pg['order'][-1]}`; shuffled lowest: **{pg['shuffled_lowest']}**.",
            "",
            "| rank | source | n | mean prompt_gain | 95% CI | frac > 0 | own-prompt loss | "
            "other-prompt loss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, s in enumerate(pg["order"], start=1):
            t = pg["by_source"][s]
            lines.append(
                f"| {k} | {s} | {t['n']} | {t['mean']:+.4f} | [{t['ci_low']:+.4f}, "
                f"{t['ci_high']:+.4f}] | {t['frac_positive']:.2f} | {t['own_loss']:.3f} | "
                f"{t['other_loss']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write benchmarks/results/instruct.{json,md}."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.instruct")
    p.add_argument("--per-source", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", metavar="RUN_DIR", help="a finished run with these settings")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-instruct"))
    cfg = p.parse_args(argv)
    t0 = time.time()
    run_dir = Path(cfg.scores) if cfg.scores else score(cfg, Path(cfg.work))
    took = round(time.time() - t0, 1)
    ex = pl.read_parquet(RunDir(run_dir).examples)
    rec = RunDir(run_dir).read_run_json()
    tgt_n = pl.read_ndjson(rec["args"]["target"]).height
    res = {
        "per_source": cfg.per_source,
        "seed": cfg.seed,
        "n_train": ex.height,
        "n_target": tgt_n,
        "settings": ", ".join(f"{k} {rec['args'][k]}" for k in SETTINGS),
        "scores_from": f"reused {run_dir}" if cfg.scores else f"scored here in {took} s",
        "ranking": rank_sources(run_dir),
    }
    from curation.instruct_corpus import instruct_frame

    train, _ = split(instruct_frame(cfg.per_source, cfg.seed), 0.1, cfg.seed)
    if set(train["id"].to_list()) == set(ex["id"].to_list()):
        res["prompt_gain"] = prompt_gain_table(run_dir, train, cfg.seed)
    else:
        print(f"note: {run_dir} was not scored on this mixture; prompt_gain left out")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "instruct.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "instruct.md").write_text(to_markdown(res) + "\n")
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
