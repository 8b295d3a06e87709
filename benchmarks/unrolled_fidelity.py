"""Unrolled K-step values against the K-step replay truth on the LDS benchmark's real corpus.

Same corpus, model, optimizer and batch order as benchmarks/lds.py. For each seed, one scored
run (`InRunScorer`, every estimator, momentum window K) trains on the full corpus; before step
t (for each t in `--steps`), from the live state:

- replay truth: `leave_one_out_window` (example i dropped from step t, the next K batches
  replayed with real AdamW, clip as in the run), optionally also with a scaled removal ε·g_i
  (`--eps`, divided by ε): the first-order limit of the same truth;
- unrolled values: `unrolled_window_values` (first order in the removal, reverse mode through
  the K replayed steps, one ghost contraction);
- one-step and momentum-propagated values of step t from the scored run.

Cell: Pearson R per step against the replay truth, median [min, max] over steps and seeds. The
cost columns time the unrolled values and the truth replays against one plain training step.

    python -m benchmarks.unrolled_fidelity            # benchmarks/results/unrolled_fidelity.*
    python -m benchmarks.unrolled_fidelity --quick    # smoke run (…_quick.*)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from adamshap_core import InRunScorer, ReplayWindow, leave_one_out_window, plain_step
from adamshap_core.unrolled import unrolled_window_values

from .common import environment, write_results
from .lds import ESTS, LdsArgs, _model_opt, _pearson, batch_order, corpus


@dataclass
class UnrolledArgs:
    """What to measure (the corpus/model/optimizer sizes are LdsArgs')."""

    seeds: tuple[int, ...] = (0, 1, 2)
    steps: tuple[int, ...] = (3, 6, 9, 12)  # 0-based steps t valued (t + K < steps of the run)
    K: int = 10
    eps: float | None = 0.05  # also a scaled-removal truth ε·g_i (divided by ε)
    plain_repeats: int = 3  # plain steps timed per valued step
    quick: bool = False
    notes: list[str] = field(default_factory=list)


def _plain_seconds(model, opt, batch, max_grad_norm, repeats: int) -> float:
    """Median wall time of one plain AdamW step (forward, backward, clip, step) on copies."""
    m = copy.deepcopy(model)
    d = opt.defaults
    o = torch.optim.AdamW(
        m.parameters(), lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"]
    )
    o.load_state_dict(copy.deepcopy(opt.state_dict()))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_step(m, o, batch, max_grad_norm)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_seed(a: LdsArgs, u: UnrolledArgs, enc, val, vocab: int, seed: int) -> list[dict]:
    order = batch_order(len(enc), a, seed)
    steps = [t for t in u.steps if t + u.K < len(order)]
    model, opt = _model_opt(a, vocab, seed)
    sc = InRunScorer(
        model, opt, val, estimators=ESTS, max_grad_norm=a.max_grad_norm, momentum_window=u.K
    )
    rows: dict[int, dict] = {}
    own, prop = {}, {}
    last = max(steps) + u.K if steps else -1
    for t, idx in enumerate(order[: last + 1]):
        if t in steps:
            window = [enc.batch(b) for b in order[t : t + u.K + 1]]
            live = ReplayWindow(model, opt, window, val, a.max_grad_norm)
            row: dict = {"seed": seed, "step": t}
            t0 = time.perf_counter()
            uw = unrolled_window_values(live)
            row["seconds_unrolled"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            truth = leave_one_out_window(live)
            row["seconds_replay"] = time.perf_counter() - t0
            row["seconds_plain_step"] = _plain_seconds(
                model, opt, window[0], a.max_grad_norm, u.plain_repeats
            )
            row["unrolled"] = uw.values.tolist()
            row["truth_replay"] = truth.tolist()
            row["unrolled_loss_full"] = uw.loss_full
            if u.eps is not None:
                scaled = leave_one_out_window(live, removal_weight=u.eps)
                row["truth_scaled"] = (scaled / u.eps).tolist()
            rows[t] = row
            print(
                f"  seed {seed} step {t}: R(unrolled, replay) = "
                f"{_pearson(uw.values, truth):.4f}; unrolled {row['seconds_unrolled']:.1f}s, "
                f"replay {row['seconds_replay']:.1f}s, plain step "
                f"{row['seconds_plain_step'] * 1e3:.0f} ms",
                flush=True,
            )
        out = sc.step(enc.batch(idx))
        if t in steps:
            own[t] = {e: out.values[e].numpy() for e in ESTS}
        for p in out.propagated:
            if p.step in steps:
                prop[p.step] = {e: p.values[e].numpy() for e in ESTS}
    for p in sc.flush_momentum():
        if p.step in steps:
            prop[p.step] = {e: p.values[e].numpy() for e in ESTS}
    sc.close()
    for t, row in rows.items():
        truth = np.array(row["truth_replay"])
        row["r_unrolled"] = _pearson(row["unrolled"], truth)
        scale = float(np.linalg.norm(truth)) or 1.0
        row["rel_err_unrolled"] = float(np.linalg.norm(np.array(row["unrolled"]) - truth) / scale)
        if "truth_scaled" in row:
            ts = np.array(row["truth_scaled"])
            row["r_unrolled_scaled"] = _pearson(row["unrolled"], ts)
            row["r_scaled_replay"] = _pearson(ts, truth)
        for e in ESTS:
            row[f"values_one_{e}"] = own[t][e].tolist()
            row[f"values_prop_{e}"] = prop[t][e].tolist()
            row[f"r_one_{e}"] = _pearson(own[t][e], truth)
            row[f"r_prop_{e}"] = _pearson(prop[t][e], truth)
    return [rows[t] for t in sorted(rows)]


def _cell(v) -> str:
    v = np.asarray(v, float)
    return f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]"


def markdown(rows: list[dict], a: LdsArgs, u: UnrolledArgs, env: dict, res: dict) -> str:
    lines = [
        "# Unrolled K-step values against the K-step replay truth",
        "",
        f"The LDS benchmark's setting (benchmarks/lds.md): demo corpus, {res['n_train']} training "
        f"documents, target = {res['n_target']} held-out `{a.target_source}` documents, "
        f"`{a.preset}` GPT-2 (float32), seq {a.seq_len}, batch {a.batch_size}, AdamW lr "
        f"{a.lr:g}, betas {a.betas[0]}/{a.betas[1]}, weight decay {a.weight_decay}, clip "
        f"{a.max_grad_norm}. Steps {list(u.steps)} of seeds {list(u.seeds)} ({len(rows)} "
        f"steps), K = {u.K}. Truth (`leave_one_out_window`): example i dropped from step t, "
        f"the next {u.K} batches replayed with real AdamW from deep-copied state; target loss "
        f"after step t+{u.K} without i minus with i. Cell: Pearson R per step against that "
        "truth, median [min, max] over the steps.",
        "",
        "| values | R vs replay |",
        "|---|---|",
        f"| unrolled (`unrolled_window_values`, K = {u.K}) | "
        + _cell([r["r_unrolled"] for r in rows])
        + " |",
    ]
    for e in ESTS:
        lines.append(
            f"| `{e}` propagated K={u.K} | " + _cell([r[f"r_prop_{e}"] for r in rows]) + " |"
        )
    for e in ESTS:
        lines.append(f"| `{e}` one-step | " + _cell([r[f"r_one_{e}"] for r in rows]) + " |")
    rel = [r["rel_err_unrolled"] for r in rows]
    lines += [
        "",
        f"Unrolled vs replay, relative error ‖unrolled − truth‖ / ‖truth‖: {_cell(rel)}.",
    ]
    if rows and "truth_scaled" in rows[0]:
        lines += [
            f"Scaled removal (ε = {u.eps:g}: ε·g_i removed, divided by ε, the first-order limit "
            "of the same replay): R(unrolled, scaled truth) "
            + _cell([r["r_unrolled_scaled"] for r in rows])
            + "; R(scaled truth, replay truth) "
            + _cell([r["r_scaled_replay"] for r in rows])
            + ".",
        ]
    su = np.array([r["seconds_unrolled"] for r in rows])
    sr = np.array([r["seconds_replay"] for r in rows])
    sp = np.array([r["seconds_plain_step"] for r in rows])
    lines += [
        "",
        f"Cost per valued step (median over steps): unrolled values {np.median(su):.1f} s = "
        f"{np.median(su / sp):.0f}x one plain training step ({np.median(sp) * 1e3:.0f} ms) = "
        f"{np.median(su / sp) / (u.K + 1):.1f}x the K+1 = {u.K + 1} plain steps it spans; the "
        f"replay truth (n+1 = {a.batch_size + 1} replays of {u.K + 1} steps) "
        f"{np.median(sr):.1f} s = {np.median(sr / su):.1f}x the unrolled values.",
        "",
        f"{env['threads']} torch thread(s), {env['cpu_count']} CPU cores shared with other jobs; "
        f"run {env['date']}. Whole benchmark: {res['minutes']:.1f} min.",
    ]
    lines += [f"\n{n}" for n in u.notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure and write benchmarks/results/unrolled_fidelity[_quick].{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="*")
    ap.add_argument("--steps", type=int, nargs="*")
    ap.add_argument("--K", type=int)
    ap.add_argument("--eps", type=float)
    ns = ap.parse_args(argv)
    if ns.quick:
        a = LdsArgs(per_source=16, quick=True)
        u = UnrolledArgs(seeds=(0,), steps=(3,), K=4, quick=True)
    else:
        a, u = LdsArgs(), UnrolledArgs()
    if ns.seeds:
        u.seeds = tuple(ns.seeds)
    if ns.steps:
        u.steps = tuple(ns.steps)
    if ns.K is not None:
        u.K = ns.K
    if ns.eps is not None:
        u.eps = ns.eps
    torch.set_num_threads(a.threads)
    t0 = time.time()
    enc, tenc, vocab = corpus(a)
    val = tenc.batch(np.arange(len(tenc)))
    rows = []
    for seed in u.seeds:
        rows += measure_seed(a, u, enc, val, vocab, seed)
    res = {"n_train": len(enc), "n_target": len(tenc), "minutes": (time.time() - t0) / 60}
    env = environment()
    md = markdown(rows, a, u, env, res)
    name = "unrolled_fidelity_quick" if u.quick else "unrolled_fidelity"
    write_results(
        name, {"lds_args": asdict(a), "args": asdict(u), "env": env, **res, "rows": rows}, md
    )
    print(md)
    print(json.dumps({"minutes": res["minutes"]}))


if __name__ == "__main__":
    main()
