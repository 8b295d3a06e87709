"""Fidelity of each estimator against real leave-one-out and Monte-Carlo Shapley truths.

For every (betas, lr, seed) a proxy GPT-2 trains with AdamW (weight decay 0.1, clipping 1.0) on
the real six-source corpus (`adamshap corpus build demo`). At early, mid and late steps the truth is computed from the saved
state with real optimizer steps, then `InRunScorer.step` takes the real step and values the batch.
Per step we record Pearson R and Spearman rho of every estimator against the truth.

LOO truth: the issue's size (4x256, seq 128, batch 16). The MC-Shapley truth needs
(n-1) x permutations real steps per batch, so it runs on the `tiny` preset (2x128), same data,
batch and sequence length; the table says so.

    python -m benchmarks.fidelity            # full grid (about 45 min on 2 CPU cores)
    python -m benchmarks.fidelity --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from adamshap_core import InRunScorer, build_model, leave_one_out, monte_carlo_shapley, plain_step

from .common import (
    RESULTS,
    batch_of,
    default_corpus,
    environment,
    sample_corpus,
    tokenized,
    write_results,
)

ESTS = ("sgd", "adam", "adam2", "adam-loo")


@dataclass
class FidelityArgs:
    """Grid and sizes of the fidelity benchmark."""

    per_source: int = 400
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16
    val_size: int = 16
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    betas: tuple[tuple[float, float], ...] = ((0.9, 0.95), (0.9, 0.999))
    seeds: tuple[int, ...] = (0, 1, 2)
    phases: tuple[tuple[str, int], ...] = (("early", 3), ("mid", 30), ("late", 60))
    steps_per_phase: int = 1
    loo_preset: str = "cpu-small"
    shapley_preset: str = "tiny"
    shapley_permutations: int = 16
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0


def _r(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan"), float("nan")
    return float(np.corrcoef(a, b)[0, 1]), float(spearmanr(a, b).statistic)


def run_one(
    args: FidelityArgs, enc, train_idx, val_idx, preset, truth, lr, betas, seed
) -> list[dict]:
    """Train one trajectory; at each phase, compare estimators with the truth for a few steps."""
    rng = np.random.default_rng(seed)
    model = build_model(preset, args.vocab_size, args.seq_len, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=args.weight_decay)
    val = batch_of(enc, val_idx)
    scorer = InRunScorer(
        model, opt, val, estimators=ESTS, max_grad_norm=args.max_grad_norm, contraction="exact"
    )  # the estimators themselves; the low-rank default's own error is in speed.md
    eval_steps = {s + k: name for name, s in args.phases for k in range(args.steps_per_phase)}
    last = max(eval_steps)
    rows = []
    for step in range(1, last + 1):
        batch = batch_of(enc, rng.choice(train_idx, args.batch_size, replace=False))
        if step not in eval_steps:
            plain_step(model, opt, batch, args.max_grad_norm)
            continue
        t0 = time.time()
        if truth == "loo":
            tv = leave_one_out(model, opt, batch, val, args.max_grad_norm)
            se = None
        else:
            sh = monte_carlo_shapley(
                model, opt, batch, val, args.max_grad_norm, args.shapley_permutations, seed=step
            )
            tv, se = sh.values, float(np.mean(sh.stderr) / (np.std(sh.values) + 1e-30))
        out = scorer.step(batch)
        row = {
            "truth": truth,
            "preset": preset,
            "lr": lr,
            "betas": list(betas),
            "seed": seed,
            "step": step,
            "phase": eval_steps[step],
            "clipped": out.clipped,
            "loss": out.loss,
            "val_loss": out.val_loss,
            "truth_rel_stderr": se,
            "seconds": time.time() - t0,
            "truth_values": tv.tolist(),
        }
        for e in ESTS:
            v = out.values[e].numpy()
            row[f"values_{e}"] = v.tolist()
            row[f"pearson_{e}"], row[f"spearman_{e}"] = _r(v, tv)
        rows.append(row)
        print(
            f"  {truth:7s} lr={lr:g} b2={betas[1]} seed={seed} step={step:3d} "
            + " ".join(f"{e}={row[f'pearson_{e}']:+.3f}" for e in ESTS),
            flush=True,
        )
    scorer.close()
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean, std, median of per-step R and pooled R per (truth, lr, phase, estimator)."""
    out = {}
    keys = sorted({(r["truth"], r["lr"], r["phase"]) for r in rows})
    for truth, lr, phase in keys:
        sel = [r for r in rows if r["truth"] == truth and r["lr"] == lr and r["phase"] == phase]
        for e in ESTS:
            pr = np.array([r[f"pearson_{e}"] for r in sel], dtype=float)
            sr = np.array([r[f"spearman_{e}"] for r in sel], dtype=float)
            # pooled: all (step, example) pairs of the cell in one correlation, raw values
            xs = np.concatenate([np.array(r[f"values_{e}"]) for r in sel])
            ys = np.concatenate([np.array(r["truth_values"]) for r in sel])
            pooled = _r(xs, ys)[0]
            out[f"{truth}|{lr}|{phase}|{e}"] = {
                "pearson_mean": float(np.nanmean(pr)),
                "pearson_std": float(np.nanstd(pr)),
                "pearson_median": float(np.nanmedian(pr)),
                "spearman_mean": float(np.nanmean(sr)),
                "pooled_pearson": pooled,
                "n_steps": int(len(sel)),
            }
    return out


def markdown(args: FidelityArgs, summary: dict, rows: list[dict]) -> str:
    """The README table: per truth, rows = lr x phase, columns = estimators."""
    lines = [
        "# Fidelity: estimators vs real-step truths",
        "",
        f"Real corpus (six Debian sources, `adamshap corpus build demo`, {args.per_source} docs/source), BPE vocab {args.vocab_size}, "
        f"seq {args.seq_len}, batch {args.batch_size}, target batch {args.val_size} held-out docs, AdamW "
        f"(weight decay {args.weight_decay}, clip {args.max_grad_norm}), betas "
        + " and ".join(f"{b[0]}/{b[1]}" for b in args.betas)
        + f", seeds {list(args.seeds)}, {args.steps_per_phase} steps per phase "
        + ", ".join(f"{n} = step {s}" for n, s in args.phases)
        + ". Cell: Pearson R mean ± std over (betas, seed, step) / Spearman rho mean / pooled R over all (step, example) pairs of the cell, raw values (n = steps).",
        "",
    ]
    for truth, title in (
        ("loo", f"Leave-one-out truth ({args.loo_preset}: the issue's size)"),
        (
            "shapley",
            f"Monte-Carlo Shapley truth ({args.shapley_preset} preset 2x128 for cost; "
            f"{args.shapley_permutations} antithetic permutations per step)",
        ),
    ):
        sel = {k: v for k, v in summary.items() if k.startswith(truth + "|")}
        if not sel:
            continue
        lines += [
            f"## {title}",
            "",
            "| lr | phase | " + " | ".join(ESTS) + " |",
            "|---|---|" + "---|" * len(ESTS),
        ]
        for lr in args.lrs:
            for phase, _ in args.phases:
                cells = []
                for e in ESTS:
                    s = sel.get(f"{truth}|{lr}|{phase}|{e}")
                    cells.append(
                        "–"
                        if s is None
                        else f"{s['pearson_mean']:.3f} ± {s['pearson_std']:.3f} / {s['spearman_mean']:.3f} / {s['pooled_pearson']:.3f} (n={s['n_steps']})"
                    )
                lines.append(f"| {lr:g} | {phase} | " + " | ".join(cells) + " |")
        if truth == "shapley":
            se = [r["truth_rel_stderr"] for r in rows if r["truth"] == "shapley"]
            lines += [
                "",
                f"Shapley truth's own standard error, relative to the spread of the values: "
                f"median {np.median(se):.3f}, max {np.max(se):.3f}.",
            ]
        lines.append("")
    clipped = np.mean([r["clipped"] for r in rows])
    lines += [
        f"Clipping was active on {100 * clipped:.0f}% of the evaluated steps. Truth + scored step "
        f"took {sum(r['seconds'] for r in rows) / 60:.0f} min summed over evaluated steps "
        f"({environment()['cpu_count']} CPU cores, shared with other jobs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the grid (resuming from partial results) and write JSON + Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one lr, one seed, tiny steps")
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--truth", choices=["loo", "shapley", "both"], default="both")
    ap.add_argument("--summarise-only", action="store_true", help="tables from partial results")
    ns = ap.parse_args(argv)
    args = FidelityArgs()
    if ns.quick:
        args = FidelityArgs(
            per_source=100,
            lrs=(1e-3,),
            seeds=(0,),
            betas=((0.9, 0.95),),
            phases=(("early", 2), ("mid", 8)),
            steps_per_phase=1,
            loo_preset="tiny",
            shapley_permutations=4,
        )
    torch.manual_seed(0)
    name = "fidelity_quick" if ns.quick else "fidelity"
    partial = RESULTS / f"{name}.partial.jsonl"
    done = []
    if partial.exists():
        done = [json.loads(x) for x in partial.read_text().splitlines() if x.strip()]
    finished = {(r["truth"], r["lr"], tuple(r["betas"]), r["seed"]) for r in done}
    df = sample_corpus(ns.corpus or default_corpus(args.per_source), args.per_source, seed=0)
    _, enc = tokenized(df, args.vocab_size, args.seq_len)
    perm = np.random.default_rng(0).permutation(len(enc))
    val_idx, train_idx = perm[: args.val_size], perm[args.val_size :]
    truths = ["loo", "shapley"] if ns.truth == "both" else [ns.truth]
    if ns.summarise_only:
        truths = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for truth in truths:
        preset = args.loo_preset if truth == "loo" else args.shapley_preset
        # seed-major order: every (betas, lr) cell gets a first seed before any gets a third
        for seed in args.seeds:
            for betas in args.betas:
                for lr in args.lrs:
                    if (truth, lr, tuple(betas), seed) in finished:
                        continue
                    rows = run_one(args, enc, train_idx, val_idx, preset, truth, lr, betas, seed)
                    with partial.open("a") as f:
                        for r in rows:
                            f.write(json.dumps(r) + "\n")
                    done += rows
    # other invocations (e.g. --truth loo and --truth shapley in parallel) append here too
    done = [json.loads(x) for x in partial.read_text().splitlines() if x.strip()]
    summary = summarise(done)
    md = markdown(args, summary, done)
    payload = {"args": asdict(args), "environment": environment(), "summary": summary, "rows": done}
    jp, mp = write_results(name, payload, md)
    print(md)
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
