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
value (the scoring run's `values_by_example.parquet`) and delta (1: the values order the sources
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
from dataclasses import dataclass
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


def _cache_file(folder: Path, keep: np.ndarray, tcfg: Any, steps: int, seed: int) -> Path:
    """Where the retraining of (kept rows, config, steps, seed) is kept (as benchmarks.pruning)."""
    import hashlib

    h = hashlib.sha1(np.packbits(keep).tobytes() + repr((tcfg, steps, seed)).encode())
    return folder / f"{h.hexdigest()[:16]}.json"


def _retrain(
    folder: Path, keep: np.ndarray, arr: Any, ev: Any, steps: int, tcfg: Any, seed: int, vocab: int
) -> dict:
    """One arm on one seed (a worker process, one torch thread); the result is cached on disk."""
    import torch

    from curation.verify import train_and_evaluate

    torch.set_num_threads(1)
    out = train_and_evaluate(arr.take(np.flatnonzero(keep)), ev, steps, tcfg, seed, vocab, 0, 4)
    rec = {k: out[k] for k in ("seed", "final_loss", "curve")}
    folder.mkdir(parents=True, exist_ok=True)
    f = _cache_file(folder, keep, tcfg, steps, seed)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(f)
    return rec


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def value_correlations(
    means: dict[str, dict[str, float]], arms: dict[str, Any], sources: list[str]
) -> dict[str, float]:
    """Per estimator, Spearman over `sources` between mean value and delta.

    A helpful source has a high mean value and a positive delta (its removal raises the target
    loss), so +1 means the values order the sources as removal does.
    """
    delta = [arms[s]["delta_mean"] for s in sources]
    return {est: spearman([m[s] for s in sources], delta) for est, m in means.items()}


def source_means(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per estimator, each source's mean example value in the scoring run."""
    from curation.run_dir import RunDir

    by_ex = pl.read_parquet(RunDir(run_dir).values_by_example)
    out = {}
    for col in [c for c in by_ex.columns if c.startswith("value_")]:
        g = by_ex.group_by("source").agg(pl.col(col).mean())
        out[col.removeprefix("value_")] = dict(zip(g["source"].to_list(), g[col].to_list()))
    return out


@dataclass(frozen=True)
class Retraining:
    """Retrain-and-evaluate arms (a set of kept rows each) on paired seeds, cached on disk."""

    folder: Path
    arr: Any
    ev: Any
    steps: int
    tcfg: Any
    vocab: int
    jobs: int

    def run(
        self,
        keeps: dict[str, np.ndarray],
        order: list[tuple[str, int]],
        cached_only: bool,
        unigram_eval: float,
        t0: float,
    ) -> tuple[dict[tuple[str, int], dict], int]:
        """Results per (arm, seed) in `order` (cached ones read, the rest run); and how many cached."""
        done: dict[tuple[str, int], dict] = {}
        todo = []
        for a, s in order:
            f = _cache_file(self.folder, keeps[a], self.tcfg, self.steps, s)
            if f.exists():
                done[(a, s)] = json.loads(f.read_text())
            else:
                todo.append((a, s))
        cached = len(done)
        if not todo or cached_only:
            return done, cached
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = {
                pool.submit(
                    _retrain,
                    self.folder,
                    keeps[a],
                    self.arr,
                    self.ev,
                    self.steps,
                    self.tcfg,
                    s,
                    self.vocab,
                ): (a, s)
                for a, s in todo
            }
            for fut in as_completed(futs):
                a, s = futs[fut]
                done[(a, s)] = fut.result()
                print(
                    f"{a:16s} seed {s}: eval loss {done[(a, s)]['final_loss']:.4f} "
                    f"(unigram {unigram_eval:.3f}, {time.time() - t0:.0f} s)",
                    flush=True,
                )
        return done, cached


def summarise_arms(
    done: dict[tuple[str, int], dict], keeps: dict[str, np.ndarray], seeds: list[int]
) -> dict[str, Any]:
    """Per arm: losses over seeds and delta = loss(arm) - loss(full), paired by seed."""
    arms: dict[str, Any] = {}
    full_by_seed = {s: done[(FULL, s)]["final_loss"] for s in seeds if (FULL, s) in done}
    for a in keeps:
        have = [s for s in seeds if (a, s) in done]
        if not have:
            continue
        losses = [done[(a, s)]["final_loss"] for s in have]
        paired = [s for s in have if s in full_by_seed]
        d = np.array([done[(a, s)]["final_loss"] - full_by_seed[s] for s in paired])
        arms[a] = {
            "n_train": int(keeps[a].sum()),
            "seeds": have,
            "eval_loss": losses,
            "eval_loss_mean": float(np.mean(losses)),
            "eval_loss_sd": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
            "delta_seeds": paired,
            "delta": d.tolist(),
            "delta_mean": float(d.mean()) if len(d) else float("nan"),
            "delta_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
        }
    return arms


def removal_truth(
    cfg: argparse.Namespace, run_dir: Path, frames: dict[str, pl.DataFrame], first: str
) -> dict[str, Any]:
    """Retrain the full mixture and the mixture minus each source on paired seeds; summarise.

    `frames`: `train` (the scored mixture), `target` (the scoring target) and `evaluation` (the
    evaluation split); `first` is the source whose removal is run first on every seed.
    """
    from curation.baselines import counted_tokens, unigram_cross_entropy
    from curation.encode import encode_corpus
    from curation.run_dir import RunDir
    from curation.tokenizer import load_tokenizer
    from curation.verify import Arrays, TrainConfig

    t0 = time.time()
    train = frames["train"]
    rec = RunDir(run_dir).run_args()
    scored_ids = set(pl.read_parquet(RunDir(run_dir).examples)["id"].to_list())
    if scored_ids != set(train["id"].to_list()):
        raise SystemExit(f"{run_dir} was not scored on this mixture (per-source, seed)")
    tok = load_tokenizer(run_dir / "tokenizer")
    seq_len = int(rec["seq_len"])
    arr, ev, tg = (
        Arrays.of(encode_corpus(frames[k], tok, seq_len)) for k in ("train", "evaluation", "target")
    )
    tr_tokens = counted_tokens(arr.input_ids, arr.attention_mask, arr.loss_mask)
    unigram = {
        k: unigram_cross_entropy(
            tr_tokens, counted_tokens(a.input_ids, a.attention_mask, a.loss_mask), len(tok)
        )
        for k, a in (("eval", ev), ("target", tg))
    }
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
    keeps = {a: np.ones(len(src), bool) if a == FULL else src != a for a in [FULL, *sources]}
    # full and the source in question on every seed first, then seed by seed
    order = [(a, s) for s in seeds for a in (FULL, first)]
    order += [(a, s) for s in seeds for a in sources if a != first]
    retrain = Retraining(Path(cfg.work) / "truth", arr, ev, steps, tcfg, len(tok), cfg.jobs)
    done, cached = retrain.run(keeps, order, cfg.cached_only, unigram["eval"], t0)
    arms = summarise_arms(done, keeps, seeds)
    scored = [s for s in sources if s in arms and arms[s]["delta"]]
    means = source_means(run_dir)
    return {
        "per_source": cfg.per_source,
        "seed": cfg.seed,
        "seeds": seeds,
        "epochs": cfg.epochs,
        "steps": steps,
        "n_train": len(train),
        "n_target": frames["target"].height,
        "n_eval": frames["evaluation"].height,
        "run": str(run_dir),
        "unigram_eval_ce": unigram["eval"],
        "unigram_target_ce": unigram["target"],
        "untrained_ce": math.log(len(tok)),
        "arms": arms,
        "value_means": {est: {s: m[s] for s in sources} for est, m in means.items()},
        "spearman_vs_delta": value_correlations(means, arms, scored),
        "spearman_sources": scored,
        "complete": len(done) == len(order),
        "retrains_done": len(done),
        "retrains_planned": len(order),
        "cached_retrains": cached,
        "total_s": round(time.time() - t0, 1),
    }


def check_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Stop when the scoring run was made with other settings than the benchmark's."""
    from curation.run_dir import RunDir

    rec = RunDir(run_dir).run_args()
    for k, v in settings.items():
        if k in rec and rec[k] != v:
            raise SystemExit(f"{run_dir} has {k}={rec[k]}, the benchmark's setting is {v}")


def measure(cfg: argparse.Namespace) -> dict[str, Any]:
    """Score (or reuse), retrain every arm on every seed, and summarise."""
    from curation.instruct_corpus import instruct_frame

    run_dir = Path(cfg.scores) if cfg.scores else score(cfg, Path(cfg.work))
    check_settings(run_dir, SETTINGS)
    df = instruct_frame(cfg.per_source, cfg.seed)
    train, target = split(df, 0.1, cfg.seed)
    evaluation = evaluation_split(df, cfg.n_eval, cfg.seed)
    frames = {"train": train, "target": target, "evaluation": evaluation}
    res = removal_truth(cfg, run_dir, frames, first="shuffled")
    scored = res["spearman_sources"]
    delta = [res["arms"][s]["delta_mean"] for s in scored]
    pg_file = RESULTS / "instruct.json"
    pg = json.loads(pg_file.read_text()).get("prompt_gain") if pg_file.exists() else None
    if pg and pg.get("run") == str(run_dir):
        res["spearman_vs_delta"]["prompt_gain"] = spearman(
            [pg["by_source"][s]["mean"] for s in scored], delta
        )
    rec_settings = ", ".join(f"{k} {v}" for k, v in SETTINGS.items())
    return {
        "command": "python -m benchmarks.instruct_truth"
        + (f" --epochs {cfg.epochs}" if cfg.epochs != 1 else ""),
        "settings": rec_settings,
        **res,
    }


def to_markdown(res: dict[str, Any]) -> str:
    """Markdown: the arms with delta, the unigram line, the Spearman per estimator."""
    arms = res["arms"]
    sources = [a for a in arms if a != FULL and arms[a]["delta"]]
    ranked = sorted(sources, key=lambda s: arms[s]["delta_mean"])
    cached = (
        f" ({res['cached_retrains']} retrainings reused from an earlier invocation)"
        if res["cached_retrains"]
        else ""
    )
    lines = [
        f"# {res.get('title', 'Instruction benchmark')}: source-removal truth ({res['epochs']} epoch"
        f"{'s' if res['epochs'] != 1 else ''})",
        "",
        f"`{res['command']}`: the mixture of `{res.get('mixture', 'benchmarks.instruct')}` "
        f"({res['n_train']} training "
        f"rows; {res['settings']}). Every arm retrains a fresh proxy for {res['steps']} steps "
        f"(the scoring run's warm start + {res['epochs']} epoch(s) of the full mixture: same "
        f"token budget), seeds {res['seeds']} (paired); loss = response-only loss on "
        f"{res['n_eval']} {res.get('eval_what', f'`{TARGET_TASK}` pairs')} used nowhere in the "
        "mixture or the scoring "
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
    for arm in [FULL, *ranked]:
        a = arms[arm]
        name = "full" if arm == FULL else f"without {arm}"
        per_seed = (
            ", ".join(f"s{s}: {d:+.4f}" for s, d in zip(a["delta_seeds"], a["delta"]))
            if arm != FULL
            else ", ".join(f"s{s}" for s in a["seeds"])
        )
        lines.append(
            f"| {name} | {a['n_train']} | {a['eval_loss_mean']:.4f} ± {a['eval_loss_sd']:.4f} | "
            f"{res['unigram_eval_ce'] - a['eval_loss_mean']:.3f} | "
            f"{a['delta_mean']:+.4f} ± {a['delta_sd']:.4f} | {per_seed} |"
        )
    lines.append("")
    if ranked:
        worst = ranked[0]
        focus = res.get("focus", "shuffled")
        lines.append(
            f"Most harmful by removal: `{worst}` (delta {arms[worst]['delta_mean']:+.4f})"
            + (
                f"; `{focus}`: delta {arms[focus]['delta_mean']:+.4f} ± "
                f"{arms[focus]['delta_sd']:.4f}, rank {ranked.index(focus) + 1} of "
                f"{len(ranked)} from most harmful."
                if focus in ranked
                else "."
            )
        )
    if not res["complete"]:
        lines.append(
            f"\n**Incomplete**: {res['retrains_done']} of {res['retrains_planned']} retrainings "
            "finished in the time this invocation had; each row's seeds are listed."
        )
    lines += [
        "",
        f"Spearman correlation over the {len(res['spearman_sources'])} sources with a delta "
        "between the source's mean value and delta (+1: the values order the sources as "
        "removal does):",
        "",
        "| estimator | Spearman vs delta |",
        "|---|---|",
    ]
    for est, c in res["spearman_vs_delta"].items():
        lines.append(f"| {est} | {c:+.3f} |")
    return "\n".join(lines)


def truth_main(argv: list[str] | None, name: str, measure: Any, work: str, epochs: int) -> int:
    """The command line of a source-removal truth benchmark `name` (instruct_truth, rag_truth).

    Writes benchmarks/results/<name>[_eN].{json,md}, N = the retraining epochs when not `epochs`
    (the scoring run's).
    """
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    p.add_argument("--per-source", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=epochs, help="retraining epochs")
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--jobs", type=int, default=2, help="retrainings run at once (1 thread each)")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="report from the retrainings already on disk; run none (a partial table if some "
        "are missing)",
    )
    p.add_argument("--scores", metavar="RUN_DIR", help="the benchmark's scoring run")
    p.add_argument("--work", default=str(REPO / "runs" / work))
    cfg = p.parse_args(argv)
    from curation.run_dir import RunDir

    if cfg.scores is None and RunDir(Path(cfg.work) / "scores").run_json.exists():
        cfg.scores = str(Path(cfg.work) / "scores")
    res = measure(cfg)
    stem = name + (f"_e{cfg.epochs}" if cfg.epochs != epochs else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(to_markdown(res) + "\n")
    print(to_markdown(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; write benchmarks/results/instruct_truth[_eN].{json,md}."""
    return truth_main(argv, "instruct_truth", measure, "bench-instruct", epochs=1)


if __name__ == "__main__":
    raise SystemExit(main())
