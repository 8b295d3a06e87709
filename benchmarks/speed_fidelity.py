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
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from adamshap_core import InRunScorer, build_model, plain_step

from .common import batch_of, default_corpus, environment, sample_corpus, tokenized, write_results
from .throughput import _rss_mib, tensor_peak_mib

# name -> (estimators, scorer options); None = plain AdamW training. The option "target_sample"
# (benchmark-side, like the pipeline's --target-batch-size) values against a rotating subset of
# that many rows of the target batch each step instead of all of it.
NO_TARGET = 10**9  # val_grad_every so large the target gradient is computed once: the ceiling
VARIANTS: dict[str, tuple[tuple[str, ...], dict] | None] = {
    "plain": None,
    "adam exact": (("adam",), {}),
    "adam vge2": (("adam",), {"val_grad_every": 2}),
    "adam vge4": (("adam",), {"val_grad_every": 4}),
    "adam vge8": (("adam",), {"val_grad_every": 8}),
    "adam vge16": (("adam",), {"val_grad_every": 16}),
    "adam target 8 of 16": (("adam",), {"target_sample": 8}),
    "adam target 4 of 16": (("adam",), {"target_sample": 4}),
    "adam lowrank r4": (("adam",), {"contraction": "lowrank", "rank": 4}),
    "adam lowrank r8": (("adam",), {"contraction": "lowrank", "rank": 8}),
    "adam lowrank r16": (("adam",), {"contraction": "lowrank", "rank": 16}),
    "adam lowrank r32": (("adam",), {"contraction": "lowrank", "rank": 32}),
    "adam vge4 + lowrank r32": (
        ("adam",),
        {"val_grad_every": 4, "contraction": "lowrank", "rank": 32},
    ),
    # Gram (T x T) form with a rank-1 (Adafactor) P: pays only for small target batches.
    "adam gram (rank-1 P)": (("adam",), {"contraction": "gram"}),
    "adam2 exact": (("adam2",), {}),
    "adam2 lowrank r8": (("adam2",), {"contraction": "lowrank", "rank": 8}),
    "adam2 lowrank r16": (("adam2",), {"contraction": "lowrank", "rank": 16}),
    # A smaller target set of its own (not a subsample of the 16; no fidelity to compare):
    # what the target pass costs as the target shrinks relative to the training batch.
    "own target of 4 rows, adam exact": (("adam",), {"own_target": 4}),
    "own target of 1 row, adam exact": (("adam",), {"own_target": 1}),
    # ... and the Gram form where it can pay (T_val = 128 tokens), against that exact row.
    "own target of 1 row, adam gram (rank-1 P)": (
        ("adam",),
        {"own_target": 1, "contraction": "gram", "ref": "own target of 1 row, adam exact"},
    ),
    # Ceilings: the target gradient computed once and never again (not a usable setting; it
    # isolates what the capture + contraction cost on top of plain training).
    "ceiling: no target pass, exact": (("adam",), {"val_grad_every": NO_TARGET}),
    "ceiling: no target pass, lowrank r16": (
        ("adam",),
        {"val_grad_every": NO_TARGET, "contraction": "lowrank", "rank": 16},
    ),
}
EXACT = {"adam": "adam exact", "adam2": "adam2 exact"}
MEMORY_VARIANTS = ("plain", "adam exact", "adam2 exact")


@dataclass
class SpeedArgs:
    """One configuration: model, sequence length, batch, steps."""

    preset: str = "cpu-small"
    seq_len: int = 128
    batch_size: int = 16
    val_size: int = 16
    vocab_size: int = 4096
    steps: int = 24  # timed + compared steps after one warm-up step
    warm_steps: int = 40  # plain AdamW steps every variant starts from (mid-run, not step 1)
    per_source: int = 120
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    min_r: float = 0.99
    target_ratio: float = 0.95
    noise: float = 0.02  # throughput ratios closer than this count as a tie (see choose)


def _setup(a: SpeedArgs):
    df = sample_corpus(default_corpus(a.per_source), a.per_source, seed=0)
    _, enc = tokenized(df, a.vocab_size, a.seq_len)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(enc))
    val = batch_of(enc, perm[: a.val_size])
    train = perm[a.val_size :]
    batches = [
        batch_of(enc, rng.choice(train, a.batch_size, replace=False))
        for _ in range(a.warm_steps + a.steps + 1)
    ]
    return val, batches[: a.warm_steps], batches[a.warm_steps :]


def _fresh(a: SpeedArgs):
    model = build_model(a.preset, a.vocab_size, max(a.seq_len, 256), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt


def warm_state(a: SpeedArgs, warm: list) -> tuple[dict, dict]:
    """Model and optimizer state after `warm_steps` plain AdamW steps (shared by every variant)."""
    model, opt = _fresh(a)
    for b in warm:
        plain_step(model, opt, b, a.max_grad_norm)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _subset(val: dict, rows: np.ndarray) -> dict:
    return {k: v[torch.as_tensor(rows)] for k, v in val.items()}


def _runner(variant: str, a: SpeedArgs, val, base: tuple[dict, dict] | None = None):
    model, opt = _fresh(a)
    if base is not None:
        model.load_state_dict(base[0])
        opt.load_state_dict(copy.deepcopy(base[1]))  # load_state_dict shares the tensors
    spec = VARIANTS[variant]
    if spec is None:
        return None, lambda b: (plain_step(model, opt, b, a.max_grad_norm), None)[1]
    ests, opts = spec
    opts = dict(opts)
    sample = opts.pop("target_sample", None)
    own = opts.pop("own_target", None)
    opts.pop("ref", None)
    if own is not None:
        val = _subset(val, np.arange(own))
    sc = InRunScorer(model, opt, val, estimators=ests, max_grad_norm=a.max_grad_norm, **opts)
    n_val = int(val["input_ids"].shape[0])
    calls = [0]

    def run(b):
        if sample is not None:  # rotate through the target batch, `sample` rows at a time
            start = (calls[0] * sample) % n_val
            sc.set_val_batch(_subset(val, (start + np.arange(sample)) % n_val))
        calls[0] += 1
        return sc.step(b).values[ests[0]]

    return sc, run


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def interleaved(a: SpeedArgs, variants: list[str]) -> dict:
    """All variants step by step in turn; per-step seconds and values."""
    val, warm, batches = _setup(a)
    base = warm_state(a, warm)
    runners = {v: _runner(v, a, val, base)[1] for v in variants}
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
        own = spec is not None and "own_target" in spec[1]
        if spec is not None and vals[v] and (not own or "ref" in spec[1]):
            ref = spec[1].get("ref", EXACT[spec[0][0]])
            if ref in vals:
                x, y = np.stack(vals[v]), np.stack(vals[ref])
                per_step = [_pearson(x[i], y[i]) for i in range(len(x))]
                row["r_vs_exact"] = _pearson(x.ravel(), y.ravel())
                row["median_step_r"] = float(np.median(per_step))
                row["min_step_r"] = min(per_step)
        rows[v] = row
    return {"rows": rows, "seconds": secs}


def _memory_child(variant: str, a: SpeedArgs) -> None:
    val, _, batches = _setup(SpeedArgs(**{**asdict(a), "steps": 3, "warm_steps": 0}))
    _, run = _runner(variant, a, val)
    base = _rss_mib()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:  # the peak of the *current* RSS while the steps run
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for b in batches:
        run(b)
    stop.set()
    th.join()
    # after the RSS window, so the profiler's own bookkeeping does not count there
    tensor = tensor_peak_mib(lambda: run(batches[0]))
    print(json.dumps({"peak_mib": peak[0] - base, "tensor_peak_mib": tensor}))


def memory(a: SpeedArgs, variants: tuple[str, ...], quick: bool) -> dict:
    """Peak live tensors and peak RSS above baseline per variant, each in its own process."""
    out = {}
    for v in variants:
        cmd = [sys.executable, "-m", "benchmarks.speed_fidelity", "--memory-child", v]
        res = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    for key, ratio in (
        ("peak_mib", "ratio_vs_plain"),
        ("tensor_peak_mib", "tensor_ratio_vs_plain"),
    ):
        plain = out["plain"][key]
        for v in out:
            out[v][ratio] = out[v][key] / plain if plain > 0 else float("nan")
    return out


STRESS_VOCAB = 53


def _flat_language(n: int, seed: int, T: int = 16) -> dict[str, torch.Tensor]:
    """A synthetic language with a flat token distribution (each token a noisy map of the last)."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randint(0, STRESS_VOCAB, (n, 1), generator=g)]
    for _ in range(T - 1):
        x.append((x[-1] * 7 + 3 + torch.randint(0, 3, (n, 1), generator=g)) % STRESS_VOCAB)
    return {"input_ids": torch.cat(x, 1)}


def stress_fidelity(variants: list[str]) -> dict[str, dict[str, float]]:
    """R vs exact of each contraction variant where `G̃` has a flat spectrum (a hard case).

    The real corpus gives `G̃` a few dominant directions that the training gradients share, so a
    rank-8 target side reproduces the values almost exactly; a language with a flat token
    distribution does not. Tiny GPT-2 in float64 after 25 plain steps, one scored step with
    all four estimators (clip-linearised adam-loo included); Pearson R per estimator.
    """
    torch.manual_seed(0)
    model = build_model("tiny", STRESS_VOCAB, 32, seed=0).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for s in range(25):
        plain_step(model, opt, _flat_language(12, 100 + s), 1.0)
    batch, val = _flat_language(12, 11), _flat_language(8, 12)

    def values(**opts) -> dict[str, np.ndarray]:
        m = copy.deepcopy(model)
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        out = InRunScorer(m, o, val, max_grad_norm=1.0, **opts).step(batch).values
        return {k: v.numpy() for k, v in out.items()}

    exact = values(contraction="exact")
    out = {}
    for v in variants:
        spec = VARIANTS[v]
        if spec is None or "contraction" not in spec[1] or spec[1].get("val_grad_every"):
            continue
        if spec[1]["contraction"] == "gram":  # sgd/adam only; sgd is exact in Gram form
            got = values(contraction="gram", estimators=("sgd", "adam"))
        else:
            got = values(contraction=spec[1]["contraction"], rank=spec[1]["rank"])
        out[v] = {e: _pearson(got[e], exact[e]) for e in got}
    return out


PHASES = (
    "adamshap.train_forward_backward",
    "adamshap.target_grad",
    "adamshap.preconditioner",
    "adamshap.optimizer_step",
    "adamshap.val_side",
    "adamshap.contract",
)


def profile_step(a: SpeedArgs, variant: str, top: int = 12) -> dict:
    """torch.profiler of one scored step (after two warm-up steps): time per phase and top ops."""
    from torch.profiler import ProfilerActivity, profile

    val, _, batches = _setup(SpeedArgs(**{**asdict(a), "steps": 2, "warm_steps": 0}))
    _, run = _runner(variant, a, val)
    run(batches[0])
    run(batches[1])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run(batches[2])
        wall_ms = (time.perf_counter() - t0) * 1e3
    ev = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e3 for e in ev if e.key in PHASES}
    phases = {k: phases.get(k, 0.0) for k in PHASES}
    phases["other (clipping, bookkeeping, value assembly)"] = max(
        0.0, wall_ms - sum(phases.values())
    )
    ops = sorted(
        (e for e in ev if not e.key.startswith("adamshap.")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )
    total = sum(e.self_cpu_time_total for e in ops)
    return {
        "wall_ms": wall_ms,
        "phases_ms": phases,
        "ops": [
            {
                "op": e.key,
                "self_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total,
                "calls": e.count,
            }
            for e in ops[:top]
        ],
    }


def choose(rows: dict, a: SpeedArgs, estimator: str = "adam") -> str:
    """The fastest `estimator` setting whose values keep pooled R >= min_r against its exact form.

    Settings within `noise` (relative) of the fastest count as equally fast (the step-time
    medians differ by about that much between identical runs); among those the one with the
    highest R wins.
    """
    ok = [
        v
        for v, r in rows.items()
        if v.startswith(estimator + " ")
        and r.get("r_vs_exact", 0.0) >= a.min_r
        and r.get("stress_min_r", 1.0) >= a.min_r
    ]
    top = max(rows[v]["ratio_vs_plain"] for v in ok)
    tied = [v for v in ok if rows[v]["ratio_vs_plain"] >= top * (1 - a.noise)]
    return max(tied, key=lambda v: (rows[v]["r_vs_exact"], rows[v]["ratio_vs_plain"]))


def markdown(res: dict, a: SpeedArgs, env: dict) -> str:
    rows, mem, best = res["rows"], res["memory"], res["fastest_ok"]
    lines = [
        "# Speed vs fidelity of the cheaper contractions",
        "",
        f"{a.preset}, seq {a.seq_len}, batch {a.batch_size}, target batch {a.val_size}, vocab "
        f"{a.vocab_size}, AdamW lr {a.lr} + clipping {a.max_grad_norm}, real corpus batches. "
        f"Every variant starts from the same model and optimizer state after {a.warm_steps} plain "
        f"steps, then all take the same {a.steps} steps (after one untimed step), interleaved step "
        f"by step in one process ({env['threads']} torch threads, {env['cpu_count']} cores). "
        "Throughput: median seconds per step, as a fraction of plain training. Fidelity: Pearson R "
        "of the per-step values against the exact contraction on the same trajectory: all "
        f"{a.steps} steps' values pooled (the selection rule), the median and the worst single "
        "step. Memory, each variant in its own process: the peak of live tensor bytes in a step "
        "(model and optimizer state included) / the peak RSS above the process baseline (which "
        "also holds what glibc's allocator keeps cached after frees).",
        "",
        "| variant | s/step | x plain throughput | R vs exact (pooled) | median step R "
        "| worst step R | flat-spectrum min R | peak mem x plain (tensors / RSS) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, r in rows.items():
        m = mem.get(v)
        fid = (
            f"{r['r_vs_exact']:.4f} | {r['median_step_r']:.4f} | {r['min_step_r']:.4f}"
            if "r_vs_exact" in r
            else "– | – | –"
        )
        mm = f"{m['tensor_ratio_vs_plain']:.2f} / {m['ratio_vs_plain']:.2f}" if m else "–"
        st = f"{r['stress_min_r']:.4f}" if "stress_min_r" in r else "–"
        lines.append(
            f"| {v} | {r['seconds_per_step']:.3f} | {r['ratio_vs_plain']:.3f} | {fid} | {st} "
            f"| {mm} |"
        )
    ex, b2 = rows.get("adam exact"), rows.get("adam2 exact")
    met = "met" if res["meets_goal"] else "not met"
    lines += [
        "",
        "Flat-spectrum min R: the same contraction on a hard case for a low-rank target side "
        "(tiny GPT-2, float64, a synthetic language with a flat token distribution; one step, "
        "all four estimators (sgd and adam for the Gram form), the lowest R against exact; "
        "`stress_fidelity` in the script).",
        "",
        f"Selection rule: R ≥ {a.min_r} against exact, pooled over the run *and* on the "
        f"flat-spectrum case; settings within {a.noise:.0%} of the fastest count as equally fast "
        "(run-to-run noise of the medians) and the most faithful of those wins.",
        "",
        f"Fastest `adam` setting by that rule: **{best}** at "
        f"{rows[best]['ratio_vs_plain']:.3f} of plain throughput (goal {a.target_ratio}: {met}).",
    ]
    b2best = res.get("fastest_ok_adam2")
    if b2best:
        lines.append(
            f"Fastest `adam2` setting by the same rule: **{b2best}** at "
            f"{rows[b2best]['ratio_vs_plain']:.3f} of plain throughput."
        )
    if ex and b2:
        lines.append(
            f"`adam2` on top: exact `adam2` runs at {b2['ratio_vs_plain']:.3f} of plain vs "
            f"{ex['ratio_vs_plain']:.3f} for exact `adam` (two target passes per step: the "
            "midpoint and the end gradient; the end gradient is reused as the next step's start)."
        )
    for name, prof in res["profiles"].items():
        lines += [
            "",
            f"Where the time goes: one `{name}` step under torch.profiler "
            f"({prof['wall_ms']:.0f} ms wall, profiler on), by phase of `InRunScorer.step`:",
            "",
            "| phase | ms | share of the step |",
            "|---|---|---|",
        ]
        for k, ms in prof["phases_ms"].items():
            lines.append(
                f"| {k.removeprefix('adamshap.')} | {ms:.0f} | {ms / prof['wall_ms']:.1%} |"
            )
        lines += ["", "Top ops by self CPU time:", "", "| op | self ms | share | calls |"]
        lines.append("|---|---|---|---|")
        for p in prof["ops"]:
            lines.append(f"| {p['op']} | {p['self_ms']:.0f} | {p['share']:.1%} | {p['calls']} |")
    lines += ["", res.get("notes", ""), ""]
    return "\n".join(lines)


NOTES = """The Gram (T×T) form (`contraction="gram"`, rows "gram (rank-1 P)") costs about
`nT·T_val·(d_in + d_out)` per layer against `nT·d_in·d_out` for the exact contraction, so it only
pays when the target token count `T_val` is below `d_in·d_out/(d_in + d_out)`: 128 (256×256),
192 (256×768) and 205 (256×1024) here. With the 16-row target, `T_val = 16 × 128 = 2048` and the
Gram form is slower than exact; with a 1-row target (`T_val = 128`) it needs 0.6-1.0x the exact
FLOPs on the Conv1D layers (the lm_head, the largest, stays exact). It also replaces Adam's per-element preconditioner by a rank-1 (Adafactor) one, an
approximation whose effect the R column measures (exact for `sgd`, whose P is the constant lr).
The tied embedding / lm_head weight stays exact (its target gradient has an embedding part the
token Gram matrices do not carry). A rank-r `G̃` costs `nT·(d_in + d_out)·r` whatever the target
batch size and keeps the full per-element preconditioner inside `G̃` before factorising.

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
    res["stress"] = stress_fidelity(variants)
    for v, rs in res["stress"].items():
        res["rows"][v]["stress_min_r"] = min(rs.values())
    res["fastest_ok"] = choose(res["rows"], a)
    if "adam2 exact" in variants:
        res["fastest_ok_adam2"] = choose(res["rows"], a, "adam2")
    res["meets_goal"] = res["rows"][res["fastest_ok"]]["ratio_vs_plain"] >= a.target_ratio
    mem_vs = tuple(
        dict.fromkeys([*MEMORY_VARIANTS, res["fastest_ok"], res.get("fastest_ok_adam2", "plain")])
    )
    res["memory"] = (
        {} if ns.no_memory else memory(a, tuple(v for v in mem_vs if v in variants), ns.quick)
    )
    res["profiles"] = {
        v: profile_step(a, v) for v in ("adam exact", "adam2 exact") if v in variants
    }
    res["notes"] = NOTES
    env = environment()
    md = markdown(res, a, env)
    name = "speed_quick" if ns.quick else "speed"
    write_results(name, {"args": asdict(a), "environment": env, **res}, md)
    print(md)


if __name__ == "__main__":
    main()
