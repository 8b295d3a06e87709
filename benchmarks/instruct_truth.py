"""Source-removal truth for the instruction benchmark: does dropping a source lower the target loss?

    python -m benchmarks.instruct_truth [--scores RUN_DIR] [--seeds 3] [--epochs 1]

Same mixture, scoring target and proxy settings as `benchmarks.instruct` (whose scoring run it
reads, or makes). A fresh proxy (verify's `train_and_evaluate`: the scoring run's tokenizer,
preset, context, batch, lr, AdamW, warmup-cosine) is retrained on the full training mixture and
on the mixture minus each source in turn, for the scoring run's number of steps
(warm-start steps + epochs x ceil(n_train / batch)): the same token budget, so removing a
source repeats the others more. Paired seeds: seed s gives every arm the same initial weights
and batch-order stream. The loss is measured on an *evaluation split* of the target task,
`pydoc-function` pairs the instruction corpus did not use anywhere (neither prompt nor response
appears in the mixture or the scoring target), response tokens only.

Per source: delta = loss(without S) - loss(full), mean and paired sd over seeds (delta < 0: S
hurts the target); Spearman correlation, over the sources, between each estimator's mean example
value (the scoring run's `values_by_example.parquet`) and -delta (1: the values order the sources
as removal does). Beside the arms: the evaluation split's cross-entropy under the add-one unigram
model of the training mixture's counted (response) tokens: a proxy near it has only learnt token
counts. `--epochs 3` retrains for 60 + 3 epochs of steps (the values stay those of the 1-epoch
scoring run). Writes benchmarks/results/instruct_truth[_eN].{json,md} (N = epochs, when not 1).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.instruct import RESULTS, SETTINGS, TARGET_TASK, score, split

REPO = Path(__file__).resolve().parents[1]
FULL = "full"


def evaluation_split(df: pl.DataFrame, n_eval: int, seed: int) -> pl.DataFrame:
    """`n_eval` target-task pairs whose prompt and response appear nowhere in `df` (seeded)."""
    from curation.corpus import DEFAULT_TEMPLATE, join_template
    from curation.instruct_corpus import pydoc_pairs

    used_p = set(df["prompt"].to_list())
    used_r = set(df["response"].to_list())
    fresh = [
        (p, r)
        for p, r in dict.fromkeys(pydoc_pairs())
        if textwrap.shorten(p, 300, placeholder=" ...") not in used_p and r not in used_r
    ]
    fresh = list({p: (p, r) for p, r in fresh}.values())  # one pair per prompt
    if len(fresh) < n_eval:
        raise SystemExit(f"only {len(fresh)} unused {TARGET_TASK} pairs; ask for fewer")
    picked = random.Random(f"{seed}:eval").sample(fresh, n_eval)
    return pl.DataFrame(
        {
            "id": [f"eval-{k:05d}" for k in range(n_eval)],
            "source": [f"{TARGET_TASK}-eval"] * n_eval,
            "prompt": [p for p, _ in picked],
            "response": [r for _, r in picked],
            "text": [join_template(DEFAULT_TEMPLATE, p, r)[0] for p, r in picked],
        }
    )


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def source_means(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per estimator, each source's mean example value in the scoring run."""
    by_ex = pl.read_parquet(run_dir / "values_by_example.parquet")
    out = {}
    for col in [c for c in by_ex.columns if c.startswith("value_")]:
        g = by_ex.group_by("source").agg(pl.col(col).mean())
        out[col.removeprefix("value_")] = dict(zip(g["source"].to_list(), g[col].to_list()))
    return out


def measure(cfg: argparse.Namespace) -> dict[str, Any]:
    """Score (or reuse), retrain every arm on every seed, and summarise."""
    from benchmarks.pruning import CACHE_HITS, _cached
    from curation.baselines import counted_tokens, unigram_cross_entropy
    from curation.encode import encode_corpus
    from curation.instruct_corpus import instruct_frame
    from curation.tokenizer import load_tokenizer
    from curation.verify import Arrays, TrainConfig, train_and_evaluate

    t0 = time.time()
    work = Path(cfg.work)
    run_dir = Path(cfg.scores) if cfg.scores else score(cfg, work)
    rec = json.loads((run_dir / "run.json").read_text())["args"]
    for k, v in SETTINGS.items():
        if k in rec and rec[k] != v:
            raise SystemExit(f"{run_dir} has {k}={rec[k]}, the benchmark's setting is {v}")
    df = instruct_frame(cfg.per_source, cfg.seed)
    train, target = split(df, 0.1, cfg.seed)
    scored_ids = set(pl.read_parquet(run_dir / "examples.parquet")["id"].to_list())
    if scored_ids != set(train["id"].to_list()):
        raise SystemExit(f"{run_dir} was not scored on this mixture (per-source, seed)")
    evaluation = evaluation_split(df, cfg.n_eval, cfg.seed)

    tok = load_tokenizer(run_dir / "tokenizer")
    seq_len = int(rec["seq_len"])
    arr = Arrays.of(encode_corpus(train, tok, seq_len))
    ev = Arrays.of(encode_corpus(evaluation, tok, seq_len))
    tg = Arrays.of(encode_corpus(target, tok, seq_len))
    tr_tokens = counted_tokens(arr.input_ids, arr.attention_mask, arr.loss_mask)
    unigram_eval = unigram_cross_entropy(
        tr_tokens, counted_tokens(ev.input_ids, ev.attention_mask, ev.loss_mask), len(tok)
    )
    unigram_target = unigram_cross_entropy(
        tr_tokens, counted_tokens(tg.input_ids, tg.attention_mask, tg.loss_mask), len(tok)
    )
    batch = int(rec["batch_size"])
    steps = int(rec["warm_start_steps"]) + cfg.epochs * math.ceil(len(train) / batch)
    tcfg = TrainConfig(
        preset=rec["preset"],
        seq_len=seq_len,
        batch_size=batch,
        lr=float(rec["lr"]),
        weight_decay=float(rec.get("weight_decay", 0.1)),
        max_grad_norm=rec.get("max_grad_norm", 1.0),
        warmup_frac=float(rec.get("warmup_frac", 0.05)),
    )
    sources = sorted(set(train["source"].to_list()))
    src = np.asarray(train["source"].to_list())
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    arms: dict[str, Any] = {}
    for arm in [FULL, *sources]:
        keep = np.ones(len(src), bool) if arm == FULL else src != arm
        runs = []
        for s in seeds:
            runs.append(
                _cached(
                    work / "truth",
                    (keep, tcfg, steps, s),
                    lambda keep=keep, s=s: train_and_evaluate(
                        arr.take(np.flatnonzero(keep)), ev, steps, tcfg, s, len(tok), 0, n_evals=4
                    ),
                )
            )
        losses = [r["final_loss"] for r in runs]
        arms[arm] = {"n_train": int(keep.sum()), "eval_loss": losses}
        print(f"{arm:16s} eval loss {np.mean(losses):.4f} (unigram {unigram_eval:.3f})", flush=True)
    full = np.array(arms[FULL]["eval_loss"])
    for a in arms.values():
        d = np.array(a["eval_loss"]) - full
        a["eval_loss_mean"] = float(np.mean(a["eval_loss"]))
        a["eval_loss_sd"] = float(np.std(a["eval_loss"], ddof=1)) if len(d) > 1 else 0.0
        a["delta"] = d.tolist()
        a["delta_mean"] = float(d.mean())
        a["delta_sd"] = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    neg_delta = [-arms[s]["delta_mean"] for s in sources]
    means = source_means(run_dir)
    corr = {est: spearman([m[s] for s in sources], neg_delta) for est, m in means.items()}
    pg_file = RESULTS / "instruct.json"
    pg = json.loads(pg_file.read_text()).get("prompt_gain") if pg_file.exists() else None
    if pg and pg.get("run") == str(run_dir):
        corr["prompt_gain"] = spearman([pg["by_source"][s]["mean"] for s in sources], neg_delta)
    return {
        "command": "python -m benchmarks.instruct_truth"
        + (f" --epochs {cfg.epochs}" if cfg.epochs != 1 else ""),
        "per_source": cfg.per_source,
        "seed": cfg.seed,
        "seeds": seeds,
        "epochs": cfg.epochs,
        "steps": steps,
        "settings": ", ".join(f"{k} {rec[k]}" for k in SETTINGS),
        "n_train": len(train),
        "n_target": target.height,
        "n_eval": evaluation.height,
        "run": str(run_dir),
        "unigram_eval_ce": unigram_eval,
        "unigram_target_ce": unigram_target,
        "untrained_ce": math.log(len(tok)),
        "arms": arms,
        "value_means": {est: {s: m[s] for s in sources} for est, m in means.items()},
        "spearman_vs_minus_delta": corr,
        "cached_retrains": len(CACHE_HITS),
        "total_s": round(time.time() - t0, 1),
    }


def to_markdown(res: dict[str, Any]) -> str:
    """Markdown: the arms with delta, the unigram line, the Spearman per estimator."""
    arms = res["arms"]
    sources = [a for a in arms if a != FULL]
    worst = min(sources, key=lambda s: arms[s]["delta_mean"])
    cached = (
        f" ({res['cached_retrains']} retrainings reused from an earlier invocation)"
        if res["cached_retrains"]
        else ""
    )
    lines = [
        f"# Instruction benchmark: source-removal truth ({res['epochs']} epoch"
        f"{'s' if res['epochs'] != 1 else ''})",
        "",
        f"`{res['command']}`: the mixture of `benchmarks.instruct` ({res['n_train']} training "
        f"rows; {res['settings']}). Every arm retrains a fresh proxy for {res['steps']} steps "
        f"(the scoring run's warm start + {res['epochs']} epoch(s) of the full mixture: same "
        f"token budget), seeds {res['seeds']} (paired); loss = response-only loss on "
        f"{res['n_eval']} `{TARGET_TASK}` pairs used nowhere in the mixture or the scoring "
        f"target. {res['total_s']:.0f} s on 2 shared CPU cores{cached}.",
        "",
        f"Evaluation split under the mixture's unigram model (response tokens): "
        f"**{res['unigram_eval_ce']:.3f}** nats (scoring target: {res['unigram_target_ce']:.3f}; "
        f"untrained: {res['untrained_ce']:.2f}). Full mixture: "
        f"**{arms[FULL]['eval_loss_mean']:.4f} ± {arms[FULL]['eval_loss_sd']:.4f}**.",
        "",
        "delta = loss(without S) - loss(full), paired over seeds; delta < 0: removing S lowers the "
        "target loss (S hurts it).",
        "",
        "| arm | n train | eval loss (mean ± sd) | below unigram | delta (mean ± paired sd) | "
        "per seed |",
        "|---|---|---|---|---|---|",
    ]
    for arm in [FULL, *sorted(sources, key=lambda s: arms[s]["delta_mean"])]:
        a = arms[arm]
        name = "full" if arm == FULL else f"without {arm}"
        per_seed = ", ".join(f"{d:+.4f}" for d in a["delta"]) if arm != FULL else ""
        lines.append(
            f"| {name} | {a['n_train']} | {a['eval_loss_mean']:.4f} ± {a['eval_loss_sd']:.4f} | "
            f"{res['unigram_eval_ce'] - a['eval_loss_mean']:.3f} | "
            f"{a['delta_mean']:+.4f} ± {a['delta_sd']:.4f} | {per_seed} |"
        )
    lines += [
        "",
        f"Most harmful by removal: `{worst}` (delta {arms[worst]['delta_mean']:+.4f}); "
        f"`shuffled`: delta {arms['shuffled']['delta_mean']:+.4f} ± "
        f"{arms['shuffled']['delta_sd']:.4f}, rank "
        f"{sorted(sources, key=lambda s: arms[s]['delta_mean']).index('shuffled') + 1} of "
        f"{len(sources)} from most harmful.",
        "",
        "Spearman correlation over the 7 sources between the source's mean value and -delta "
        "(+1: the values order the sources as removal does):",
        "",
        "| estimator | Spearman vs -delta |",
        "|---|---|",
    ]
    for est, c in res["spearman_vs_minus_delta"].items():
        lines.append(f"| {est} | {c:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; write benchmarks/results/instruct_truth[_eN].{json,md}."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.instruct_truth")
    p.add_argument("--per-source", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="retraining epochs (scoring stays 1)")
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--scores", metavar="RUN_DIR", help="benchmarks.instruct's scoring run")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-instruct"))
    cfg = p.parse_args(argv)
    if cfg.scores is None and (Path(cfg.work) / "scores" / "run.json").exists():
        cfg.scores = str(Path(cfg.work) / "scores")
    res = measure(cfg)
    stem = "instruct_truth" + (f"_e{cfg.epochs}" if cfg.epochs != 1 else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(to_markdown(res) + "\n")
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
