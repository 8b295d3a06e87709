"""Run-level fidelity: does the sum of an example's values predict leaving it out of the run?

Linear datamodeling score (LDS). A small real corpus (the project's demo corpus, built from
installed Debian packages by `curation.demo_corpus`), a target set of held-out `pydocs`
documents, and a tiny proxy GPT-2 trained for a few epochs with AdamW from a fixed seed and a
fixed batch order. One scored run on the full corpus gives every example's summed value per
estimator (one-step values, and momentum-propagated values for each window K). Then M random
half-subsets are retrained from the same seed with the same batch order (left-out examples
dropped from their batches, each batch's loss the mean over the examples it kept), and the
target loss at the end is recorded. LDS = Spearman, over subsets, between the summed values of
the included examples and the negated target loss (a larger value sum should mean a lower
loss). Repeated for several seeds (model init and batch order).

The same scored run also measures the K-step leave-one-out table: at a few steps t, each example
of the batch is removed from step t and the next K batches are replayed with real AdamW from
deep-copied state (`leave_one_out_window`), against the propagated and the one-step values
and the unrolled values (`unrolled_window_values`, first order in the removal).

The LDS table also has an unrolled column: before every step t of the scored run,
`unrolled_window_values` over the steps t..end (its window runs to the end of the run, or
`unrolled_window` steps) gives each example of step t the first-order effect on the *final*
target loss of removing it at step t, through every remaining real AdamW step (its share of m
and v and the later batches' reaction to the moved weights included, so it has no separate
propagated form); summed per example over its occurrences like the other columns.

    python -m benchmarks.lds            # the table in the README
    python -m benchmarks.lds --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr

from adamshap_core import (
    InRunScorer,
    ReplayWindow,
    build_model,
    leave_one_out_carry,
    leave_one_out_window,
    plain_step,
    unrolled_window_values,
)
from adamshap_core.batch import per_example_loss, prepare_batch

from .common import environment, write_results

ESTS = ("sgd", "adam", "adam2", "adam-loo")


@dataclass
class LdsArgs:
    """Sizes of the LDS benchmark (for 2 slow CPU cores)."""

    per_source: int = 32  # training documents per source (6 sources)
    target_source: str = "pydocs"
    target_size: int = 16  # held-out documents of target_source (the target batch)
    vocab_size: int = 2048
    seq_len: int = 64
    preset: str = "tiny"
    batch_size: int = 16
    epochs: int = 2
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    subsets: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    windows: tuple[int, ...] = (10, 24)  # momentum windows K of the propagated values
    loo_window: int = 10
    loo_steps: tuple[int, ...] = (6,)  # 0-based steps whose K-step LOO truth is measured
    unrolled: bool = True  # the unrolled LDS column (in the first scored run of each seed)
    unrolled_window: int | None = None  # K of the unrolled values; None = to the end of the run
    unrolled_from: tuple[int, ...] = (1, 2, 4, 8, 12)  # LDS of unrolled sums over steps >= t0
    snapshots: int = 3  # checkpoint values (`prune`'s default ranking) from this many snapshots
    threads: int = 1
    quick: bool = False
    notes: list[str] = field(default_factory=list)


QUICK = dict(
    per_source=16,
    epochs=2,
    subsets=6,
    seeds=(0,),
    windows=(4,),
    loo_window=4,
    loo_steps=(3,),
    quick=True,
)


def corpus(a: LdsArgs):
    """Training rows and target rows of the demo corpus, tokenised with a BPE trained on training text."""
    import polars as pl

    from curation.demo_corpus import demo_frame
    from curation.encode import encode_corpus
    from curation.tokenizer import train_tokenizer

    df = demo_frame(per_source=a.per_source + a.target_size, seed=0)
    parts, target = [], None
    for src in sorted(df["source"].unique().to_list()):
        sub = df.filter(pl.col("source") == src)
        if src == a.target_source:
            target = sub.head(a.target_size)
            sub = sub.slice(a.target_size)
        parts.append(sub.head(a.per_source))
    train = pl.concat(parts)
    tok = train_tokenizer(train["text"].to_list(), vocab_size=a.vocab_size, seed=0)
    return encode_corpus(train, tok, a.seq_len), encode_corpus(target, tok, a.seq_len), len(tok)


def batch_order(n: int, a: LdsArgs, seed: int) -> list[np.ndarray]:
    """Seeded epochs of full batches (the same order for the full run and every subset)."""
    rng = np.random.default_rng(1000 + seed)
    out = []
    for _ in range(a.epochs):
        perm = rng.permutation(n)
        out += [perm[i : i + a.batch_size] for i in range(0, n - a.batch_size + 1, a.batch_size)]
    return out


def _model_opt(a: LdsArgs, vocab: int, seed: int):
    model = build_model(a.preset, vocab, a.seq_len, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=a.betas, weight_decay=a.weight_decay)
    return model, opt


@torch.no_grad()
def _target_loss(model, val) -> float:
    return float(per_example_loss(model, prepare_batch(val)).mean())


def retrain(a: LdsArgs, enc, val, vocab: int, order, keep: np.ndarray, seed: int) -> float:
    """Target loss after training on the kept examples only, same seed and batch order."""
    model, opt = _model_opt(a, vocab, seed)
    for idx in order:
        kept = idx[keep[idx]]
        if len(kept):
            plain_step(model, opt, enc.batch(kept), a.max_grad_norm)
    return _target_loss(model, val)


def unrolled_to_end(a: LdsArgs, model, opt, enc, val, order, t: int) -> np.ndarray:
    """Unrolled values of step t's examples: first-order effect of removing each at step t on the
    target loss after the last step (or after step t + `unrolled_window`), from the live state."""
    end = len(order) if a.unrolled_window is None else min(len(order), t + a.unrolled_window + 1)
    window = [enc.batch(b) for b in order[t:end]]
    return unrolled_window_values(ReplayWindow(model, opt, window, val, a.max_grad_norm)).values


def scored_run(
    a: LdsArgs,
    enc,
    val,
    vocab: int,
    order,
    seed: int,
    K: int,
    unrolled: bool = False,
    tenc=None,
) -> dict:
    """Full-corpus scored run: summed one-step, propagated (and unrolled) values per example,
    checkpoint values (when the target documents `tenc` are given), K-step LOO rows."""
    from curation.checkpoint_values import (
        CheckpointValueConfig,
        checkpoint_values,
        snapshot_steps,
    )

    model, opt = _model_opt(a, vocab, seed)
    sc = InRunScorer(
        model, opt, val, estimators=ESTS, max_grad_norm=a.max_grad_norm, momentum_window=K
    )
    n = len(enc)
    own = {e: np.zeros(n) for e in ESTS}
    prop = {e: np.zeros(n) for e in ESTS}
    step_own, step_prop, loo_rows = {}, {}, []
    unr = np.zeros(n) if unrolled else None
    unr_steps: dict[int, np.ndarray] = {}
    unrolled_seconds = 0.0
    # checkpoint values as `adamshap score` saves them: snapshots after these global steps
    snap_at = set(snapshot_steps(0, len(order), a.snapshots)) if tenc is not None else set()
    snaps = []
    do_loo = K == a.loo_window
    t0 = time.time()
    for t, idx in enumerate(order):
        if unrolled:
            tu = time.time()
            unr_steps[t] = unrolled_to_end(a, model, opt, enc, val, order, t)
            np.add.at(unr, idx, unr_steps[t])
            unrolled_seconds += time.time() - tu
        if do_loo and t in a.loo_steps and t + K < len(order):
            tl = time.time()
            window = [enc.batch(b) for b in order[t : t + K + 1]]
            live = ReplayWindow(model, opt, window, val, a.max_grad_norm)
            replay = leave_one_out_window(live)
            carry = leave_one_out_carry(live)
            seconds = time.time() - tl
            tl = time.time()
            unr_k = unrolled_window_values(
                ReplayWindow(model, opt, window, val, a.max_grad_norm)
            ).values
            loo_rows.append(
                {
                    "step": t,
                    "truth_replay": replay.tolist(),
                    "truth_carry": carry.tolist(),
                    "values_unrolled": unr_k.tolist(),
                    "r_replay_unrolled": _pearson(unr_k, replay),
                    "r_carry_unrolled": _pearson(unr_k, carry),
                    "seconds": seconds,
                    "seconds_unrolled": time.time() - tl,
                }
            )
        out = sc.step(enc.batch(idx))
        for e in ESTS:
            np.add.at(own[e], idx, out.values[e].numpy())
        step_own[t] = {e: out.values[e].numpy() for e in ESTS}
        if t + 1 in snap_at:
            snaps.append(
                {
                    "step": t + 1,
                    "model": copy.deepcopy(model.state_dict()),
                    "optimizer": copy.deepcopy(opt.state_dict()),
                }
            )
        for p in out.propagated:
            for e in ESTS:
                np.add.at(prop[e], order[p.step], p.values[e].numpy())
            step_prop[p.step] = {e: p.values[e].numpy() for e in ESTS}
    for p in sc.flush_momentum():
        for e in ESTS:
            np.add.at(prop[e], order[p.step], p.values[e].numpy())
        step_prop[p.step] = {e: p.values[e].numpy() for e in ESTS}
    seconds = time.time() - t0
    sc.close()
    full_loss = _target_loss(model, val)
    ckpt, ckpt_seconds = None, 0.0
    if snaps:  # every document valued at the shared snapshots (curation/checkpoint_values.py)
        tc = time.time()
        ckpt = checkpoint_values(
            model, opt, snaps, enc, tenc, CheckpointValueConfig(seed=0), progress=False
        ).mean(axis=0)
        ckpt_seconds = time.time() - tc
    for row in loo_rows:
        t = row["step"]
        for kind, src in (("prop", step_prop), ("one", step_own)):
            for e in ESTS:
                row[f"values_{kind}_{e}"] = src[t][e].tolist()
                for truth in ("replay", "carry"):
                    tv = np.array(row[f"truth_{truth}"])
                    row[f"r_{truth}_{kind}_{e}"] = _pearson(src[t][e], tv)
    return {
        "K": K,
        "own": own,
        "prop": prop,
        "unrolled": unr,
        "unrolled_steps": unr_steps,
        "unrolled_seconds": unrolled_seconds,
        "ckpt": ckpt,
        "ckpt_steps": [sn["step"] for sn in snaps],
        "ckpt_seconds": ckpt_seconds,
        "loo_rows": loo_rows,
        "full_target_loss": full_loss,
        "seconds": seconds,
    }


def _pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def lds(values: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> float:
    """Spearman over subsets between the summed values of the kept examples and -target loss."""
    pred = masks.astype(float) @ values
    return float(spearmanr(pred, -losses).statistic)


def lds_renorm(steps: dict[int, np.ndarray], order, masks: np.ndarray, losses: np.ndarray) -> float:
    """LDS of the first-order prediction that keeps each retrained batch's mean: a kept example's
    per-step value weighted by n_b / k_b (batch size over the examples the subset kept of it)."""
    pred = np.zeros(len(masks))
    for m, mask in enumerate(masks):
        for t, v in steps.items():
            keep = mask[order[t]]
            if keep.any():
                pred[m] += len(keep) / keep.sum() * v[keep].sum()
    return float(spearmanr(pred, -losses).statistic)


def run(a: LdsArgs) -> dict:
    """Every seed: scored runs (one per window K), M subset retrains, LDS per variant."""
    torch.set_num_threads(a.threads)
    enc, tenc, vocab = corpus(a)
    val = tenc.batch(np.arange(len(tenc)))
    n = len(enc)
    per_seed = []
    for seed in a.seeds:
        order = batch_order(n, a, seed)
        print(f"seed {seed}: {n} docs, {len(order)} steps", flush=True)
        runs = [
            scored_run(
                a,
                enc,
                val,
                vocab,
                order,
                seed,
                K,
                unrolled=a.unrolled and i == 0,
                tenc=tenc if i == 0 else None,
            )
            for i, K in enumerate(a.windows)
        ]
        for r in runs:
            print(f"  scored K={r['K']}: {r['seconds']:.0f}s", flush=True)
        if a.unrolled:
            print(f"  unrolled values: {runs[0]['unrolled_seconds']:.0f}s", flush=True)
        rng = np.random.default_rng(2000 + seed)
        masks = np.zeros((a.subsets, n), dtype=bool)
        for m in range(a.subsets):
            masks[m, rng.choice(n, n // 2, replace=False)] = True
        t0 = time.time()
        losses = np.array(
            [retrain(a, enc, val, vocab, order, masks[m], seed) for m in range(a.subsets)]
        )
        print(f"  {a.subsets} retrains: {time.time() - t0:.0f}s", flush=True)
        scores = {}
        for e in ESTS:
            scores[f"{e}"] = lds(runs[0]["own"][e], masks, losses)
            for r in runs:
                scores[f"{e} K={r['K']}"] = lds(r["prop"][e], masks, losses)
        if runs[0]["ckpt"] is not None:
            scores["ckpt"] = lds(runs[0]["ckpt"], masks, losses)
        if a.unrolled:
            steps = runs[0]["unrolled_steps"]
            scores["unrolled"] = lds(runs[0]["unrolled"], masks, losses)
            scores["unrolled renorm"] = lds_renorm(steps, order, masks, losses)
            for t0 in a.unrolled_from:
                v = np.zeros(n)
                for t in range(t0, len(order)):
                    np.add.at(v, order[t], steps[t])
                scores[f"unrolled from {t0}"] = lds(v, masks, losses)
        print("  " + " ".join(f"{k}={v:+.3f}" for k, v in scores.items()), flush=True)
        per_seed.append(
            {
                "seed": seed,
                "lds": scores,
                "subset_losses": losses.tolist(),
                "full_target_loss": runs[0]["full_target_loss"],
                "scored_seconds": {r["K"]: r["seconds"] for r in runs},
                "unrolled_seconds": runs[0]["unrolled_seconds"] if a.unrolled else None,
                "unrolled_step_norms": [
                    float(np.linalg.norm(v)) for _, v in sorted(runs[0]["unrolled_steps"].items())
                ],
                "ckpt_steps": runs[0]["ckpt_steps"],
                "ckpt_seconds": runs[0]["ckpt_seconds"],
                "loo_rows": [row for r in runs for row in r["loo_rows"]],
                "values": {
                    **{e: runs[0]["own"][e].tolist() for e in ESTS},
                    **{f"{e} K={r['K']}": r["prop"][e].tolist() for r in runs for e in ESTS},
                    **({"unrolled": runs[0]["unrolled"].tolist()} if a.unrolled else {}),
                    **({"ckpt": runs[0]["ckpt"].tolist()} if runs[0]["ckpt"] is not None else {}),
                },
            }
        )
    return {"n_train": n, "n_target": len(tenc), "vocab": vocab, "seeds": per_seed}


def markdown(res: dict, a: LdsArgs, env: dict) -> str:
    """LDS table (mean ± std over seeds) and the K-step LOO table."""
    seeds = res["seeds"]
    steps = len(batch_order(res["n_train"], a, 0))
    lines = [
        "# Run-level fidelity (linear datamodeling score)",
        "",
        f"Demo corpus from the installed Debian packages: {res['n_train']} training documents "
        f"({a.per_source} per source), target = {res['n_target']} held-out `{a.target_source}` "
        f"documents. `{a.preset}` GPT-2, BPE vocab {res['vocab']}, seq {a.seq_len}, batch "
        f"{a.batch_size}, {a.epochs} epochs = {steps} steps, AdamW lr {a.lr:g}, betas "
        f"{a.betas[0]}/{a.betas[1]}, weight decay {a.weight_decay}, clip {a.max_grad_norm}, no "
        f"warm start. {a.subsets} random half-subsets per seed, each retrained from the same "
        f"init with the same batch order (left-out examples dropped from their batches); seeds "
        f"{list(a.seeds)}. Cell: LDS = Spearman over subsets between the summed values of the "
        "kept examples and the negated target loss after retraining, mean ± std over seeds "
        "(per-seed values in brackets). `K=k`: momentum-propagated values with a k-step window "
        f"(K >= {steps} follows the carry to the end of the run).",
        "",
        "| estimator | one-step | " + " | ".join(f"propagated K={k}" for k in a.windows) + " |",
        "|---|---|" + "---|" * len(a.windows),
    ]
    for e in ESTS:
        cells = []
        for key in [e] + [f"{e} K={k}" for k in a.windows]:
            v = np.array([s["lds"][key] for s in seeds])
            per = ", ".join(f"{x:.2f}" for x in v)
            cells.append(f"{v.mean():.3f} ± {v.std():.3f} [{per}]")
        lines.append(f"| `{e}` | " + " | ".join(cells) + " |")

    def cell(key: str) -> str:
        v = np.array([s["lds"][key] for s in seeds])
        return f"{v.mean():.3f} ± {v.std():.3f} [" + ", ".join(f"{x:.2f}" for x in v) + "]"

    if "unrolled" in seeds[0]["lds"]:
        span = "the end of the run" if a.unrolled_window is None else f"K = {a.unrolled_window}"
        lines.append(
            f"| unrolled, window to {span} | {cell('unrolled')} | "
            + " | ".join("(carry included)" for _ in a.windows)
            + " |"
        )
    if "ckpt" in seeds[0]["lds"]:
        lines.append(
            f"| `ckpt` (checkpoint values, {a.snapshots} snapshots) | {cell('ckpt')} | "
            + " | ".join("–" for _ in a.windows)
            + " |"
        )
    if "unrolled" in seeds[0]["lds"]:
        rho = {
            e: np.array(
                [
                    spearmanr(s["values"]["unrolled"], s["values"][f"{e} K={a.windows[-1]}"])[0]
                    for s in seeds
                ]
            )
            for e in ESTS
        }
        mins = sum(s["unrolled_seconds"] for s in seeds) / 60
        lines += [
            "",
            "Unrolled: before every step t of the scored run, `unrolled_window_values` over "
            f"steps t..{'end' if a.unrolled_window is None else f't+{a.unrolled_window}'} "
            "(docs/method.md §12): each example's first-order effect on the final target loss "
            "of removing it at step t, through every remaining real AdamW step (its share of m "
            "and v and the later batches' reaction to the moved weights), summed over its "
            f"occurrences; {mins:.1f} min in all. Spearman over examples between the unrolled "
            f"sums and the propagated K={a.windows[-1]} sums, per seed: "
            + ", ".join(f"`{e}` " + "/".join(f"{x:.2f}" for x in rho[e]) for e in ESTS)
            + ". The same per-step unrolled values, LDS: with each retrained batch's mean over "
            "the examples it kept (a kept example's value weighted by n_b / k_b, the first-order "
            f"prediction of the retrain as run) {cell('unrolled renorm')}; summed over steps "
            ">= t0 only: "
            + "; ".join(
                f"t0 = {t0}: {cell(f'unrolled from {t0}')}" for t0 in a.unrolled_from if t0 < steps
            )
            + ". Norm over the batch of the step's unrolled values (mean over seeds), by step: "
            + ", ".join(
                f"{t}: {np.mean([s['unrolled_step_norms'][t] for s in seeds]):.2g}"
                for t in sorted({0, 1, 2, 4, 8, steps // 2, steps - 1})
            )
            + ".",
        ]
    if "ckpt" in seeds[0]["lds"]:
        lines += [
            "",
            f"`ckpt`: checkpoint values as `adamshap score --snapshots {a.snapshots}` forms them "
            "(curation/checkpoint_values.py: Adam-preconditioned gradient cosine with the target "
            "documents, common direction removed, trimmed mean over targets, mean over snapshots "
            f"after steps {seeds[0]['ckpt_steps']} of the scored run), one per document, "
            "not summed over occurrences; "
            f"{sum(s['ckpt_seconds'] for s in seeds) / 60:.1f} min in all.",
        ]
    sub = np.array([s["subset_losses"] for s in seeds])
    lines += [
        "",
        "Target loss after the full run: "
        + ", ".join(f"{s['full_target_loss']:.3f}" for s in seeds)
        + f" (seeds {list(a.seeds)}); on the half-subsets: mean {sub.mean():.3f}, spread "
        f"(std over subsets, mean over seeds) {sub.std(1).mean():.4f}.",
        "",
    ]
    rows = [r for s in seeds for r in s["loo_rows"]]
    if rows:
        K = a.loo_window
        lines += [
            f"## K-step leave-one-out truth (K = {K})",
            "",
            f"At steps {list(a.loo_steps)} of each seed ({len(rows)} steps, batch "
            f"{a.batch_size}), two truths from real AdamW steps on deep-copied state. "
            f"**In-run** (`leave_one_out_carry`): at each step s = t..t+{K} of the realised "
            "trajectory, a real step with example i's share of Adam's state removed (its "
            "gradient at s = t, its share of m and v after), target-loss changes summed: the "
            "per-step utility the values are defined on. **Replay** (`leave_one_out_window`): "
            f"i removed from step t, the next {K} batches replayed; truth = target loss after "
            f"step t+{K} without it minus with it, so it also holds the later batches' reaction "
            "to the moved weights, which no in-run value models. Cell: Pearson R per step, "
            "median [min, max] over the steps.",
            "",
            "| estimator | propagated vs in-run | one-step vs in-run | propagated vs replay "
            "| one-step vs replay |",
            "|---|---|---|---|---|",
        ]
        for e in ESTS:
            cells = []
            for truth in ("carry", "replay"):
                for kind in ("prop", "one"):
                    v = np.array([r[f"r_{truth}_{kind}_{e}"] for r in rows])
                    cells.append(f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]")
            lines.append(f"| `{e}` | " + " | ".join(cells) + " |")
        secs = sum(r["seconds"] for r in rows)
        if "r_replay_unrolled" in rows[0]:
            cells = {t: np.array([r[f"r_{t}_unrolled"] for r in rows]) for t in ("replay", "carry")}
            cell = {
                t: f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]" for t, v in cells.items()
            }
            su = sum(r["seconds_unrolled"] for r in rows)
            lines += [
                "",
                "Unrolled values (`unrolled_window_values`: the replay to first order in the "
                "removal, reverse mode through the K replayed AdamW steps, docs/method.md §12), "
                f"same steps: vs replay {cell['replay']}, vs in-run {cell['carry']}; "
                f"{su / 60:.1f} min in all.",
            ]
        lines += ["", f"Truth replays took {secs / 60:.1f} min in all."]
    lines += [
        "",
        f"{env['threads']} torch thread(s), {env['cpu_count']} CPU cores shared with other jobs; "
        f"run {env['date']}.",
    ]
    lines += [f"\n{n}" for n in a.notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the LDS benchmark and write benchmarks/results/lds[_quick].{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="*")
    ap.add_argument("--subsets", type=int)
    ns = ap.parse_args(argv)
    a = LdsArgs(**QUICK) if ns.quick else LdsArgs()
    if ns.seeds:
        a.seeds = tuple(ns.seeds)
    if ns.subsets:
        a.subsets = ns.subsets
    t0 = time.time()
    res = run(a)
    env = environment()
    res["minutes"] = (time.time() - t0) / 60
    name = "lds_quick" if a.quick else "lds"
    md = markdown(res, a, env)
    md += f"\nWhole benchmark: {res['minutes']:.1f} min.\n"
    write_results(name, {"args": asdict(a), "env": env, **res}, md)
    print(md)
    print(json.dumps({"minutes": res["minutes"]}))


if __name__ == "__main__":
    main()
