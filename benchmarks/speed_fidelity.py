"""Speed vs fidelity of the cheaper contractions (issue 6, items 2-3), in one interleaved run.

Every variant trains its own copy of the same model on the same real-corpus batches with the
same target batch, one step each in turn (plain, exact, option 1, option 2, ..., plain, ...). The
options only change how values are computed, never the training step, so all copies follow the
same trajectory and each variant's per-step values can be compared with the exact contraction's:
fidelity is the Pearson R of all (step, example) values pooled, plus the worst single step.
Throughput is the median per-step time as a ratio to plain training in the same run; peak memory
above baseline is measured per variant in its own process (as benchmarks/throughput.py does).

    python -m benchmarks.speed_fidelity            # cpu-small, seq 128, batch 16, 12 steps
    python -m benchmarks.speed_fidelity --quick    # tiny, seq 64, 4 steps (smoke test)
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from adamshap_core import InRunScorer, build_model, plain_step

from .common import batch_of, default_corpus, environment, sample_corpus, tokenized, write_results

# name -> (estimators, scorer options); None = plain AdamW training.
VARIANTS: dict[str, tuple[tuple[str, ...], dict] | None] = {
    "plain": None,
    "adam exact": (("adam",), {}),
    "adam vge4": (("adam",), {"val_grad_every": 4}),
    "adam vge10": (("adam",), {"val_grad_every": 10}),
    "adam lowrank r4": (("adam",), {"contraction": "lowrank", "rank": 4}),
    "adam lowrank r8": (("adam",), {"contraction": "lowrank", "rank": 8}),
    "adam lowrank r16": (("adam",), {"contraction": "lowrank", "rank": 16}),
    "adam vge4 + lowrank r8": (
        ("adam",),
        {"val_grad_every": 4, "contraction": "lowrank", "rank": 8},
    ),
    "adam vge10 + lowrank r16": (
        ("adam",),
        {"val_grad_every": 10, "contraction": "lowrank", "rank": 16},
    ),
    "adam2 exact": (("adam2",), {}),
}
EXACT = {"adam": "adam exact", "adam2": "adam2 exact"}
MEMORY_VARIANTS = ("plain", "adam exact", "adam vge10 + lowrank r16")


@dataclass
class SpeedArgs:
    """One configuration: model, sequence length, batch, steps."""

    preset: str = "cpu-small"
    seq_len: int = 128
    batch_size: int = 16
    val_size: int = 16
    vocab_size: int = 4096
    steps: int = 12  # timed + compared steps after one warm-up step
    per_source: int = 120
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    min_r: float = 0.99
    target_ratio: float = 0.95


def _setup(a: SpeedArgs):
    df = sample_corpus(default_corpus(), a.per_source, seed=0)
    _, enc = tokenized(df, a.vocab_size, a.seq_len)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(enc))
    val = batch_of(enc, perm[: a.val_size])
    train = perm[a.val_size :]
    batches = [
        batch_of(enc, rng.choice(train, a.batch_size, replace=False)) for _ in range(a.steps + 1)
    ]
    return val, batches


def _runner(variant: str, a: SpeedArgs, val, base_state=None):
    model = build_model(a.preset, a.vocab_size, max(a.seq_len, 256), seed=0)
    if base_state is not None:
        model.load_state_dict(base_state)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    spec = VARIANTS[variant]
    if spec is None:
        return None, lambda b: (plain_step(model, opt, b, a.max_grad_norm), None)[1]
    ests, opts = spec
    sc = InRunScorer(model, opt, val, estimators=ests, max_grad_norm=a.max_grad_norm, **opts)

    def run(b):
        return sc.step(b).values[ests[0]]

    return sc, run


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def interleaved(a: SpeedArgs, variants: list[str]) -> dict:
    """All variants step by step in turn; per-step seconds and values."""
    val, batches = _setup(a)
    state = copy.deepcopy(
        build_model(a.preset, a.vocab_size, max(a.seq_len, 256), seed=0).state_dict()
    )
    runners = {v: _runner(v, a, val, state)[1] for v in variants}
    secs = {v: [] for v in variants}
    vals = {v: [] for v in variants}
    for s, b in enumerate(batches):
        order = variants if s % 2 == 0 else variants[::-1]  # alternate order against drift
        for v in order:
            t0 = time.perf_counter()
            out = runners[v](b)
            dt = time.perf_counter() - t0
            if s > 0:  # step 0 is the warm-up
                secs[v].append(dt)
            if out is not None:
                vals[v].append(out.numpy())
        msg = ", ".join(f"{v}={secs[v][-1]:.2f}s" for v in variants if s > 0)
        print(f"step {s}: {msg}", flush=True)
    med = {v: float(np.median(secs[v])) for v in variants}
    rows = {}
    for v in variants:
        row = {"seconds_per_step": med[v], "ratio_vs_plain": med["plain"] / med[v]}
        spec = VARIANTS[v]
        if spec is not None and vals[v]:
            ref = EXACT[spec[0][0]]
            if ref in vals:
                x, y = np.stack(vals[v]), np.stack(vals[ref])
                row["r_vs_exact"] = _pearson(x.ravel(), y.ravel())
                row["min_step_r"] = min(_pearson(x[i], y[i]) for i in range(len(x)))
        rows[v] = row
    return {"rows": rows, "seconds": secs}


def _memory_child(variant: str, a: SpeedArgs) -> None:
    val, batches = _setup(SpeedArgs(**{**asdict(a), "steps": 3}))
    _, run = _runner(variant, a, val)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for b in batches:
        run(b)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (peak - base) / 1024}))


def memory(a: SpeedArgs, variants: tuple[str, ...], quick: bool) -> dict:
    """Peak RSS above baseline per variant, each in its own process."""
    out = {}
    for v in variants:
        cmd = [sys.executable, "-m", "benchmarks.speed_fidelity", "--memory-child", v]
        res = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    plain = out["plain"]["peak_mib"]
    for v in out:
        out[v]["ratio_vs_plain"] = out[v]["peak_mib"] / plain if plain > 0 else float("nan")
    return out


def profile_step(a: SpeedArgs, variant: str, top: int = 12) -> list[dict]:
    """torch.profiler self-CPU time of one scored step (after a warm-up step), top ops."""
    from torch.profiler import ProfilerActivity, profile

    val, batches = _setup(SpeedArgs(**{**asdict(a), "steps": 2}))
    _, run = _runner(variant, a, val)
    run(batches[0])
    run(batches[1])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(batches[2])
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev)
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in ev[:top]
    ]


def choose(rows: dict, a: SpeedArgs) -> str:
    """The fastest `adam` setting whose values keep R >= min_r against the exact contraction."""
    ok = [
        v for v, r in rows.items() if v.startswith("adam ") and r.get("r_vs_exact", 0.0) >= a.min_r
    ]
    return max(ok, key=lambda v: rows[v]["ratio_vs_plain"])


def markdown(res: dict, a: SpeedArgs, env: dict) -> str:
    rows, mem, best = res["rows"], res["memory"], res["fastest_ok"]
    lines = [
        "# Speed vs fidelity of the cheaper contractions",
        "",
        f"{a.preset}, seq {a.seq_len}, batch {a.batch_size}, target batch {a.val_size}, vocab "
        f"{a.vocab_size}, AdamW lr {a.lr} + clipping {a.max_grad_norm}, real corpus batches, "
        f"{a.steps} steps after one warm-up, all variants interleaved step by step in one process "
        f"({env['threads']} torch threads, {env['cpu_count']} cores, shared machine). "
        "Throughput: median seconds per step, as a fraction of plain training. Fidelity: Pearson R "
        "of the per-step values against the exact contraction on the same trajectory (all steps "
        "pooled; and the worst single step). Memory: peak RSS above baseline, own process.",
        "",
        "| variant | s/step | x plain throughput | R vs exact | worst step R | peak mem x plain |",
        "|---|---|---|---|---|---|",
    ]
    for v, r in rows.items():
        m = mem.get(v)
        fid = f"{r['r_vs_exact']:.4f} | {r['min_step_r']:.4f}" if "r_vs_exact" in r else "– | –"
        mm = f"{m['ratio_vs_plain']:.2f}" if m else "–"
        lines.append(
            f"| {v} | {r['seconds_per_step']:.2f} | {r['ratio_vs_plain']:.3f} | {fid} | {mm} |"
        )
    ex, b2 = rows.get("adam exact"), rows.get("adam2 exact")
    lines += [
        "",
        f"Fastest `adam` setting with R ≥ {a.min_r} against exact: **{best}** at "
        f"{rows[best]['ratio_vs_plain']:.3f} of plain throughput (goal {a.target_ratio}).",
    ]
    if ex and b2:
        lines.append(
            f"`adam2` on top: exact `adam2` runs at {b2['ratio_vs_plain']:.3f} of plain vs "
            f"{ex['ratio_vs_plain']:.3f} for exact `adam` (two target passes per step: the "
            "midpoint and the end gradient; the end gradient is reused as the next step's start)."
        )
    for name, prof in res["profiles"].items():
        lines += [
            "",
            f"Profile of one scored step, `{name}` (torch.profiler, self CPU time, top ops):",
            "",
            "| op | self ms | share | calls |",
            "|---|---|---|---|",
        ]
        for p in prof:
            lines.append(f"| {p['op']} | {p['self_ms']:.0f} | {p['share']:.1%} | {p['calls']} |")
    lines += ["", res.get("notes", ""), ""]
    return "\n".join(lines)


NOTES = """Why a low-rank `G̃` and not the Gram (T×T) form: the Gram form costs about
`nT·T_val·(d_in + d_out)` per layer against `nT·d_in·d_out` for the exact contraction, so it only
pays when the target token count `T_val` is below `d_in·d_out/(d_in + d_out)`. Here
`T_val = 16 × 128 = 2048`, while `d_in·d_out/(d_in + d_out)` is 128 (256×256), 192 (256×768),
205 (256×1024) and 241 (lm_head 256×4096): the Gram form would be 8-16x *slower* than exact, and it
also needs a factorised (rank-1) preconditioner, an approximation of its own. A rank-r `G̃` costs
`nT·(d_in + d_out)·r` whatever the target batch size, keeps the full per-element preconditioner
inside `G̃` before factorising, and its error is measured directly below.

Bias of `val_grad_every = k`: between refreshes the values use `∇l_val(w_{t-j})` (j < k) with this
step's preconditioner, i.e. first-order error `H_val·(w_t − w_{t-j})`; it grows with the learning
rate and with k and is largest early in training, where these runs are."""


def main(argv: list[str] | None = None) -> None:
    """Run the interleaved comparison and write benchmarks/results/speed.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--variants", default=None, help="comma list (plain and exacts always run)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", default=None, metavar="VARIANT")
    ns = ap.parse_args(argv)
    a = SpeedArgs()
    if ns.quick:
        a = SpeedArgs(preset="tiny", seq_len=64, steps=4, per_source=30)
    if ns.steps:
        a.steps = ns.steps
    if ns.memory_child:
        _memory_child(ns.memory_child, a)
        return
    torch.manual_seed(0)
    variants = list(VARIANTS)
    if ns.variants:
        keep = set(ns.variants.split(",")) | {"plain", "adam exact"}
        variants = [v for v in variants if v in keep]
    res = interleaved(a, variants)
    res["fastest_ok"] = choose(res["rows"], a)
    res["meets_goal"] = res["rows"][res["fastest_ok"]]["ratio_vs_plain"] >= a.target_ratio
    mem_vs = tuple(dict.fromkeys([*MEMORY_VARIANTS, res["fastest_ok"]]))
    res["memory"] = (
        {} if ns.no_memory else memory(a, tuple(v for v in mem_vs if v in variants), ns.quick)
    )
    res["profiles"] = {"adam exact": profile_step(a, "adam exact")}
    res["notes"] = NOTES
    env = environment()
    md = markdown(res, a, env)
    name = "speed_quick" if ns.quick else "speed"
    write_results(name, {"args": asdict(a), "environment": env, **res}, md)
    print(md)


if __name__ == "__main__":
    main()
