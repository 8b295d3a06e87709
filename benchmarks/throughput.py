"""Throughput and memory: plain AdamW steps vs scored steps vs torch.func per-example gradients.

All variants of one configuration run interleaved in one process (A B C ... A B C ...) on the
same model shape, batches and target batch, so the ratios are robust to machine noise. Peak memory
is measured per variant in a fresh subprocess, two ways on CPU: the peak of live tensor bytes
during a step (model, optimizer state and everything else torch allocated, from the profiler's
memory timeline: the CPU counterpart of CUDA's `max_memory_allocated`), and the peak RSS above
the process's baseline after building model and data (what the OS sees, including what glibc's
allocator keeps cached after frees). CUDA: `torch.cuda.max_memory_allocated`.

    python -m benchmarks.throughput                # presets tiny, cpu-small, gpt2 x seq 64/128/256
    python -m benchmarks.throughput --quick
    python -m benchmarks.throughput --gpu          # one CUDA GPU, bf16 autocast (benchmarks/gpu_check.sh)
    python -m benchmarks.throughput --realistic    # batch 16/64, target 1/4/16, exact/low-rank/auto
    python -m benchmarks.throughput --realistic --gpu   # the same on CUDA, bf16 (gpu_check.sh)

`--realistic` adds its tables to the existing results file (json key `realistic`) and leaves the
grid's rows as they are; a grid run keeps the realistic tables of the file it overwrites.

Only torch and transformers are needed (no polars/curation), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from adamshap_core import InRunScorer, build_model, plain_step
from adamshap_core.batch import per_example_loss, per_example_loss_from_logits, prepare_batch

from .common import RESULTS, ROOT, environment, write_results

VARIANTS: dict[str, tuple[str, ...] | None] = {
    "plain": None,
    "adam": ("adam",),
    "adam+sgd": ("adam", "sgd"),
    "adam-loo": ("adam-loo",),
    "adam2": ("adam2",),
    "all four": ("adam2", "adam-loo", "adam", "sgd"),
    "per-example grads (torch.func), adam": (),
}


@dataclass
class ThroughputArgs:
    """Grid of the throughput benchmark."""

    configs: tuple[tuple[str, int, int], ...] = (
        ("tiny", 64, 3),
        ("tiny", 128, 3),
        ("tiny", 256, 3),
        ("cpu-small", 64, 2),
        ("cpu-small", 128, 2),
        ("cpu-small", 256, 2),
        ("gpt2", 64, 2),
        ("gpt2", 128, 2),
        ("gpt2", 256, 1),
    )  # (preset, seq_len, interleaved rounds)
    batch_size: int = 16
    val_size: int = 16
    vocab_size: int = 4096
    steps_per_round: int = 2
    memory_config: tuple[str, int] = ("cpu-small", 128)
    device: str = "cpu"
    amp: str | None = None  # "bf16": forward under torch.autocast(bfloat16), values in fp32/fp64
    target_chunk: int | None = 8  # the scorer's default: target gradients 8 examples at a time


GPU_ARGS = ThroughputArgs(
    configs=(
        ("cpu-small", 128, 5),
        ("gpt2", 128, 5),
        ("gpt2", 256, 5),
        ("gpt2", 512, 3),
    ),
    steps_per_round=5,
    memory_config=("gpt2", 256),
    device="cuda",
    amp="bf16",
)
AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_seconds(
    runners: dict,
    batches: list,
    rounds: int,
    spr: int,
    device: str,
    *,
    alternate: bool = True,
    before=None,
) -> dict[str, float]:
    """Median s/step per variant, interleaved: every round times `spr` steps of each runner
    (order reversed every other round when `alternate`, so drift hits all alike);
    `before(v)` runs untimed before each variant's steps."""
    times: dict[str, list[float]] = {v: [] for v in runners}
    order = list(runners)
    for r in range(rounds):
        for v in order[::-1] if alternate and r % 2 else order:
            if before is not None:
                before(v)
            t0 = time.perf_counter()
            for k in range(spr):
                runners[v](batches[(r + k) % len(batches)])
            _sync(device)
            times[v].append((time.perf_counter() - t0) / spr)
    return {v: float(np.median(ts)) for v, ts in times.items()}


def _data(vocab: int, n: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, vocab, (n, T), generator=g)}


class PerExampleStep:
    """The naive alternative: materialise every per-example gradient with torch.func, then dot."""

    def __init__(self, model, opt, val, max_grad_norm=1.0):
        self.device = next(model.parameters()).device
        self.model, self.opt, self.clip = model, opt, max_grad_norm
        self.val = prepare_batch(val, self.device)
        self.names = [k for k, _ in model.named_parameters()]

    def step(self, batch):
        b = prepare_batch(batch, self.device)
        n = b["input_ids"].shape[0]
        params = {k: v.detach() for k, v in self.model.named_parameters()}

        def loss_one(p, ids):
            out = functional_call(self.model, p, (ids[None],), tie_weights=True)
            one = {
                "input_ids": ids[None],
                "attention_mask": torch.ones_like(ids[None]),
                "loss_mask": torch.ones_like(ids[None]),
            }
            return per_example_loss_from_logits(out.logits, one)[0] / n

        pe = vmap(grad(loss_one), in_dims=(None, 0))(params, b["input_ids"])
        vloss = per_example_loss(self.model, self.val).mean()
        vg = torch.autograd.grad(vloss, list(self.model.parameters()))
        for k, p in self.model.named_parameters():
            p.grad = pe[k].sum(0)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        vals = torch.zeros(n, dtype=torch.float64, device=self.device)
        for (k, p), g in zip(self.model.named_parameters(), vg):
            st = self.opt.state.get(p, {})
            v = st.get("exp_avg_sq", torch.zeros_like(p))
            t = int(st.get("step", 0)) + 1
            b1, b2 = self.opt.param_groups[0]["betas"]
            vt = b2 * v + (1 - b2) * p.grad**2
            P = (1 - b1) / (1 - b1**t) / ((vt / (1 - b2**t)).sqrt() + 1e-8)
            vals += (pe[k].flatten(1) @ (P * g).flatten()).double()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return vals


def _model_opt(preset: str, T: int, a: ThroughputArgs, seed: int = 0):
    model = build_model(preset, a.vocab_size, max(T, 256), seed=seed).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt


def make_runner(variant: str, preset: str, T: int, a: ThroughputArgs, seed: int = 0, shared=None):
    """A `step(batch)` callable for one variant, on its own model + optimizer or on `shared`."""
    model, opt = shared if shared is not None else _model_opt(preset, T, a, seed)
    val = _data(a.vocab_size, a.val_size, T, seed=999)
    ests = VARIANTS[variant]
    amp = AMP[a.amp]
    if ests is None:
        return lambda b: plain_step(model, opt, b, 1.0, amp_dtype=amp)
    if ests == ():
        return PerExampleStep(model, opt, val).step
    sc = InRunScorer(
        model,
        opt,
        val,
        estimators=ests,
        max_grad_norm=1.0,
        amp_dtype=amp,
        target_chunk=a.target_chunk,
    )
    return sc.step


def time_config(preset: str, T: int, rounds: int, a: ThroughputArgs) -> dict:
    """Interleave all variants for `rounds` rounds; return steps/s and ratios vs plain.

    gpt2 on CPU: one model and optimizer shared by every variant, restored to the same snapshot
    (untimed) before each step, since six gpt2 copies with their optimizer states and a seq-256
    step do not fit in 24 GiB. Inactive scorers' hooks return at once, so sharing costs nothing.
    """
    big = preset == "gpt2" and a.device == "cpu"
    shared = _model_opt(preset, T, a) if big else None
    variants = [v for v in VARIANTS if not (big and VARIANTS[v] == ())]  # torch.func: minutes
    runners = {v: make_runner(v, preset, T, a, shared=shared) for v in variants}
    if shared is not None:
        plain_step(*shared, _data(a.vocab_size, a.batch_size, T, seed=7), 1.0)  # Adam state
        snap = (copy.deepcopy(shared[0].state_dict()), copy.deepcopy(shared[1].state_dict()))

        def restore() -> None:
            shared[0].load_state_dict(snap[0])
            shared[1].load_state_dict(copy.deepcopy(snap[1]))

        inner = dict(runners)
        runners = {v: _restoring(run, restore) for v, run in inner.items()}
    batches = [_data(a.vocab_size, a.batch_size, T, seed=s) for s in range(4)]
    for run in runners.values():  # warm-up (twice on a GPU: kernels, allocator, autotuning)
        for _ in range(1 if a.device == "cpu" else 2):
            getattr(run, "prepare", lambda: None)()
            run(batches[0])
    _sync(a.device)
    spr = 1 if preset == "gpt2" and a.device == "cpu" else a.steps_per_round  # ~2-20 s a step
    med = _median_seconds(
        runners,
        batches,
        rounds,
        spr,
        a.device,
        alternate=False,
        # gpt2 on CPU: restore the snapshot, untimed
        before=lambda v: getattr(runners[v], "prepare", lambda: None)(),
    )
    return {
        "preset": preset,
        "seq_len": T,
        "rounds": rounds,
        "steps_per_round": spr,
        "seconds_per_step": med,
        "steps_per_s": {v: 1 / s for v, s in med.items()},
        "ratio_vs_plain": {v: med["plain"] / s for v, s in med.items()},
    }


class _restoring:
    """A runner whose model is restored (untimed) before each step: call `prepare()` first."""

    def __init__(self, run, restore):
        self.run, self.prepare = run, restore

    def __call__(self, b):
        return self.run(b)


def _rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def tensor_peak_mib(fn) -> float:
    """Peak of live CPU tensor bytes (MiB) while `fn()` runs, counting tensors alive before it."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action in (Action.PREEXISTING, Action.CREATE):
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak / 2**20


def _memory_child(variant: str, preset: str, T: int, gpu: bool = False) -> None:
    a = GPU_ARGS if gpu else ThroughputArgs()
    batches = [_data(a.vocab_size, a.batch_size, T, seed=s) for s in range(2)]
    run = make_runner(variant, preset, T, a)
    base = _rss_mib()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:  # the peak of the *current* RSS while steps run
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for b in batches * 2:
        run(b)
    stop.set()
    th.join()
    out = {"peak_mib": peak[0] - base, "base_mib": base}
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # after the RSS window: the profiler's own bookkeeping must not count there
        out["tensor_peak_mib"] = tensor_peak_mib(lambda: run(batches[0]))
    print(json.dumps(out))


def memory(a: ThroughputArgs, repeats: int = 3) -> dict:
    """Peak memory above baseline of each variant, each in its own process (median of repeats).

    Sampled RSS varies by ~±5% between identical runs (allocator timing), hence the median.
    """
    preset, T = a.memory_config
    out = {}
    gpu = ["--gpu"] if a.device != "cpu" else []
    for v in VARIANTS:
        runs = []
        for _ in range(repeats):
            res = subprocess.run(
                [sys.executable, "-m", "benchmarks.throughput", "--memory-child", v, preset, str(T)]
                + gpu,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        out[v] = {"runs": runs}
    measures = ["cuda_peak_mib"] if a.device != "cpu" else ["tensor_peak_mib", "peak_mib"]
    for key in measures:  # median of the repeats, each measure on its own
        plain = float(np.median([r[key] for r in out["plain"]["runs"]]))
        for v in out:
            med = float(np.median([r[key] for r in out[v]["runs"]]))
            out[v][key] = med
            out[v][f"{key}_ratio_vs_plain"] = med / plain if plain > 0 else float("nan")
    return {"preset": preset, "seq_len": T, "variants": out, "measures": measures}


# --- realistic settings: small targets, batch 64, low-rank / auto contraction -------------------


@dataclass
class RealisticArgs:
    """The realistic-settings table: target rows and contraction at real training batch sizes.

    Each group (preset, batch, seq) shares one model and optimizer, restored (untimed) to one
    snapshot before each round, so every variant steps from the same state on the same batches:
    timings are interleaved and the per-example values of the low-rank/auto contraction are
    compared with the exact ones on identical steps (pooled Pearson R).
    """

    groups: tuple[tuple[str, int, int, tuple[int, ...]], ...] = (
        ("gpt2", 64, 128, (4, 1, 16)),  # target <= 4 first: the bars
        ("cpu-small", 16, 128, (1, 4, 16)),
        ("cpu-small", 64, 128, (1, 4, 16)),
    )  # (preset, training batch, seq, target rows), in the order they run
    # run last, after the momentum row (if time allows)
    extra_groups: tuple[tuple[str, int, int, tuple[int, ...]], ...] = (
        ("gpt2", 16, 128, (1, 4, 16)),
        ("gpt2", 16, 256, (1, 4, 16)),
        ("gpt2", 64, 256, (4,)),
    )
    contractions: tuple[str, ...] = ("exact", "lowrank", "auto")
    sgd_contractions: tuple[str, ...] = ("exact",)  # sgd beside adam, for adam/sgd
    rounds: int = 2
    steps_per_round: int = 2
    warmup: int = 1  # untimed steps per variant (their values count for fidelity)
    # gpt2 on CPU (a step is 20-100 s on 2 loaded cores): one step per round, and the untimed
    # warm-up of each variant on a few rows only (it runs every code path once)
    big_steps_per_round: int = 1
    big_warmup_rows: int = 4
    vocab_size: int = 4096
    rank: int = 8
    target_chunk: int | None = 8
    device: str = "cpu"
    amp: str | None = None
    # live-tensor / CUDA peak memory, each variant in its own process, right after the group of
    # its (preset, batch, seq): (preset, batch, seq, target)
    memory_cells: tuple[tuple[str, int, int, int], ...] = (
        ("gpt2", 64, 128, 4),
        ("cpu-small", 64, 128, 4),
    )
    # momentum-propagated values: (preset, batch, seq, target, K, timed rounds)
    momentum: tuple[str, int, int, int, int, int] | None = ("cpu-small", 16, 128, 4, 10, 3)
    memory_variants: tuple[str, ...] = ("plain", "adam exact", "adam lowrank", "adam auto")


GPU_REALISTIC = RealisticArgs(
    groups=(
        ("gpt2", 64, 128, (1, 4, 16)),
        ("gpt2", 16, 128, (1, 4, 16)),
        ("gpt2", 64, 256, (1, 4, 16)),
        ("cpu-small", 64, 128, (1, 4, 16)),
    ),
    extra_groups=(("gpt2", 64, 512, (1, 4, 16)),),
    rounds=5,
    steps_per_round=5,
    warmup=2,
    device="cuda",
    amp="bf16",
    memory_cells=(("gpt2", 64, 128, 4), ("gpt2", 64, 256, 4)),
    momentum=("gpt2", 16, 128, 4, 10, 5),
)
QUICK_REALISTIC = RealisticArgs(
    groups=(("tiny", 4, 32, (1, 2)),),
    extra_groups=(),
    rounds=1,
    steps_per_round=1,
    vocab_size=512,
    memory_cells=(("tiny", 4, 32, 2),),
    momentum=("tiny", 4, 32, 2, 2, 1),
    memory_variants=("plain", "adam exact"),
)


def realistic_variants(ra: RealisticArgs) -> dict[str, tuple[str, str] | None]:
    """Variant name -> (estimator, contraction); `plain` -> None."""
    out: dict[str, tuple[str, str] | None] = {"plain": None}
    out.update({f"adam {c}": ("adam", c) for c in ra.contractions})
    out.update({f"sgd {c}": ("sgd", c) for c in ra.sgd_contractions})
    return out


def _realistic_scorer(model, opt, est: str, contraction: str, target: int, T: int, ra, K=0):
    return InRunScorer(
        model,
        opt,
        _data(ra.vocab_size, target, T, seed=999),
        estimators=(est,),
        max_grad_norm=1.0,
        amp_dtype=AMP[ra.amp],
        target_chunk=ra.target_chunk,
        contraction=contraction,
        rank=ra.rank,
        momentum_window=K,
    )


def _layout(sc: InRunScorer) -> tuple[frozenset, frozenset]:
    """Which weights a scorer contracts low-rank and which in the Gram form at its target size."""
    gram = sc._gram_now() if sc._gram_candidates else {}
    return frozenset(sc._lowrank_ids), frozenset(gram)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson R of two value vectors (nan when either is constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def time_realistic(preset: str, B: int, T: int, targets: tuple[int, ...], ra: RealisticArgs):
    """One (preset, batch, seq) group: per target size, plain and every variant interleaved."""
    a = ThroughputArgs(vocab_size=ra.vocab_size, device=ra.device, amp=ra.amp)
    model, opt = _model_opt(preset, T, a)
    plain_step(model, opt, _data(ra.vocab_size, B, T, seed=7), 1.0)  # Adam state exists
    snap = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))

    def restore() -> None:
        model.load_state_dict(snap[0])
        opt.load_state_dict(copy.deepcopy(snap[1]))

    batches = [_data(ra.vocab_size, B, T, seed=s) for s in range(4)]
    big = preset == "gpt2" and ra.device == "cpu"
    spr = ra.big_steps_per_round if big else ra.steps_per_round
    warm = {k: t[: ra.big_warmup_rows] for k, t in batches[0].items()} if big else batches[0]
    amp = AMP[ra.amp]
    cells = []
    for target in targets:
        t0 = time.time()
        variants = realistic_variants(ra)
        scorers: dict[str, InRunScorer] = {}
        layouts = {}
        for v, spec in variants.items():
            if spec is not None:
                scorers[v] = _realistic_scorer(model, opt, spec[0], spec[1], target, T, ra)
                layouts[v] = _layout(scorers[v])
        same_as: dict[str, str] = {}  # auto that picks exactly low-rank's (or exact's) layout
        for v in scorers:
            if v.endswith(" auto"):
                est = variants[v][0]
                for other in (f"{est} lowrank", f"{est} exact"):
                    if other in scorers and layouts[other] == layouts[v]:
                        same_as[v] = other
                        break
        for v in same_as:
            scorers.pop(v).close()

        def run(v: str, b, scorers=scorers, variants=variants):
            if v == "plain":
                plain_step(model, opt, b, 1.0, amp_dtype=amp)
                return None
            out = scorers[v].step(b)
            return out.values[variants[v][0]].detach().double().cpu().numpy()

        timed = ["plain", *scorers]
        values: dict[str, list[np.ndarray]] = {v: [] for v in scorers}
        for _ in range(ra.warmup):
            for v in timed:
                restore()
                val = run(v, warm)
                if val is not None and not big:  # a few-row warm-up is no step to compare
                    values[v].append(val)
        _sync(ra.device)

        def timed_step(b, v: str, run=run, values=values) -> None:
            val = run(v, b)
            if val is not None:
                values[v].append(val)

        def restored(_v: str, restore=restore) -> None:
            restore()
            _sync(ra.device)

        runners = {v: functools.partial(timed_step, v=v) for v in timed}
        med = _median_seconds(runners, batches, ra.rounds, spr, ra.device, before=restored)
        for sc in scorers.values():
            sc.close()
        for v, other in same_as.items():
            med[v] = med[other]
            values[v] = values[other]
        ratio = {v: med["plain"] / s for v, s in med.items()}
        fidelity = {}
        for v, (est, c) in ((v, s) for v, s in variants.items() if s is not None):
            ref = f"{est} exact"
            if c != "exact" and ref in values and values[v]:
                fidelity[v] = pearson(np.concatenate(values[v]), np.concatenate(values[ref]))
        cell = {
            "preset": preset,
            "batch_size": B,
            "seq_len": T,
            "target_rows": target,
            "rounds": ra.rounds,
            "steps_per_round": spr,
            "warmup": ra.warmup,
            "warmup_rows": ra.big_warmup_rows if big else B,
            "seconds_per_step": med,
            "ratio_vs_plain": ratio,
            "fidelity_pearson_vs_exact": fidelity,
            "fidelity_steps": len(values.get("adam exact", [])),
            "same_layout_as": same_as,
            "layout": {
                v: {"lowrank_weights": len(lr), "gram_weights": len(g)}
                for v, (lr, g) in layouts.items()
            },
        }
        if "adam exact" in med and "sgd exact" in med:
            cell["adam_vs_sgd_exact"] = med["sgd exact"] / med["adam exact"]
        cells.append(cell)
        print(
            f"{preset} b{B} seq {T} target {target}: "
            + ", ".join(f"{k}={x:.3f}" for k, x in ratio.items())
            + " R "
            + ", ".join(f"{k}={x:.4f}" for k, x in fidelity.items())
            + f"  ({time.time() - t0:.0f}s)",
            flush=True,
        )
        yield cell


def time_momentum(preset: str, B: int, T: int, target: int, K: int, rounds: int, ra):
    """plain vs adam vs adam with momentum_window=K, each on its own model, window filled first."""
    a = ThroughputArgs(vocab_size=ra.vocab_size, device=ra.device, amp=ra.amp)
    amp = AMP[ra.amp]
    runners = {}
    for v, k in (("plain", None), ("adam", 0), (f"adam K={K}", K)):
        model, opt = _model_opt(preset, T, a)
        if k is None:
            runners[v] = lambda b, m=model, o=opt: plain_step(m, o, b, 1.0, amp_dtype=amp)
        else:
            runners[v] = _realistic_scorer(model, opt, "adam", "exact", target, T, ra, K=k).step
    batches = [_data(ra.vocab_size, B, T, seed=s) for s in range(4)]
    for run in runners.values():  # fill the window (K+1 steps), untimed
        for i in range(K + 1):
            run(batches[i % len(batches)])
    _sync(ra.device)
    med = _median_seconds(runners, batches, rounds, ra.steps_per_round, ra.device)
    return {
        "preset": preset,
        "batch_size": B,
        "seq_len": T,
        "target_rows": target,
        "window": K,
        "rounds": rounds,
        "steps_per_round": ra.steps_per_round,
        "seconds_per_step": med,
        "ratio_vs_plain": {v: med["plain"] / s for v, s in med.items()},
    }


def _realistic_memory_child(spec: dict) -> None:
    """One variant's peak memory at one cell (run in its own process by `realistic_memory`)."""
    ra = GPU_REALISTIC if spec["gpu"] else RealisticArgs(vocab_size=spec["vocab_size"])
    a = ThroughputArgs(vocab_size=ra.vocab_size, device=ra.device, amp=ra.amp)
    preset, B, T, target = spec["preset"], spec["batch_size"], spec["seq_len"], spec["target"]
    model, opt = _model_opt(preset, T, a)
    batches = [_data(ra.vocab_size, B, T, seed=s) for s in range(2)]
    if spec["variant"] == "plain":
        amp = AMP[ra.amp]

        def run(b):
            return plain_step(model, opt, b, 1.0, amp_dtype=amp)
    else:
        est, c = spec["variant"].split(" ")
        run = _realistic_scorer(model, opt, est, c, target, T, ra).step
    base = _rss_mib()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    run(batches[0])  # the first step creates Adam's state (RSS: sampled over this step)
    stop.set()
    th.join()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        run(batches[1])
    out = {"peak_mib": peak[0] - base, "base_mib": base}
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["tensor_peak_mib"] = tensor_peak_mib(lambda: run(batches[1]))
    print(json.dumps(out))


def realistic_memory(
    cell: tuple[str, int, int, int], ra: RealisticArgs, same_as: dict[str, str] | None = None
) -> dict:
    """Peak memory of every variant at one cell, each in its own process (one run each)."""
    preset, B, T, target = cell
    same_as = same_as or {}
    gpu = ra.device != "cpu"
    pp = os.environ.get("PYTHONPATH", "")
    out = {}
    for v in realistic_variants(ra):
        if v not in ra.memory_variants:
            continue
        if v in same_as and same_as[v] in out:  # auto with low-rank's layout: the same run
            out[v] = dict(out[same_as[v]], same_as=same_as[v])
            continue
        spec = {
            "variant": v,
            "preset": preset,
            "batch_size": B,
            "seq_len": T,
            "target": target,
            "gpu": gpu,
            "vocab_size": ra.vocab_size,
        }
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "-m", "benchmarks.throughput", "--realistic-memory-child"]
            + [json.dumps(spec)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), pp]))},
        )
        if res.returncode != 0:
            raise RuntimeError(f"memory child {v} failed:\n{res.stderr[-3000:]}")
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  memory {preset} b{B} seq {T} target {target} {v}: {out[v]}", flush=True)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
    measures = ["cuda_peak_mib"] if gpu else ["tensor_peak_mib", "peak_mib"]
    for key in measures:
        plain = out["plain"][key]
        for v in out:
            out[v][f"{key}_ratio_vs_plain"] = out[v][key] / plain if plain > 0 else float("nan")
    return {
        "preset": preset,
        "batch_size": B,
        "seq_len": T,
        "target_rows": target,
        "variants": out,
        "measures": measures,
    }


def realistic(
    ra: RealisticArgs,
    on_update=None,
    keep=None,
    parts: tuple[str, ...] = ("groups", "momentum", "memory"),
    previous: dict | None = None,
) -> dict:
    """The whole realistic table; `on_update(result)` after every cell (a crash keeps them).

    `keep(preset, batch)` and `ra.groups` choose the cells; `parts` which kinds of rows run;
    rows of `previous` (an earlier result) that this run does not redo are kept.
    """
    keep = keep or (lambda preset, B: True)
    res: dict = {"args": asdict(ra), "cells": [], "momentum": None, "memory": [], "partial": True}
    if previous:
        res["cells"] = list(previous.get("cells", []))
        res["memory"] = list(previous.get("memory", []))
        res["momentum"] = previous.get("momentum")

    def key(c: dict) -> tuple:
        return (c["preset"], c["batch_size"], c["seq_len"], c["target_rows"])

    def put(rows: list[dict], row: dict) -> None:  # replace the same cell from `previous`
        rows[:] = [r for r in rows if key(r) != key(row)] + [row]

    def update() -> None:
        res["environment"] = environment()
        if on_update is not None:
            on_update(res)

    def memory_of(preset: str, B: int, T: int) -> None:
        for cell in ra.memory_cells:
            if tuple(cell[:3]) != (preset, B, T):
                continue
            timed = [
                c
                for c in res["cells"]
                if (c["preset"], c["batch_size"], c["seq_len"], c["target_rows"]) == tuple(cell)
            ]
            same = timed[0]["same_layout_as"] if timed else {}
            put(res["memory"], realistic_memory(cell, ra, same))
            update()

    def groups(gs):
        for preset, B, T, targets in gs:
            if not keep(preset, B):
                continue
            if "groups" in parts and targets:
                for cell in time_realistic(preset, B, T, targets, ra):
                    put(res["cells"], cell)
                    update()
            if "memory" in parts:
                memory_of(preset, B, T)  # right after its group: the memory bars come early

    groups(ra.groups)
    if "momentum" in parts and ra.momentum is not None and keep(*ra.momentum[:2]):
        t0 = time.time()
        res["momentum"] = time_momentum(*ra.momentum, ra)
        print(f"momentum: {res['momentum']['ratio_vs_plain']}  ({time.time() - t0:.0f}s)")
        update()
    groups(ra.extra_groups)
    res["partial"] = False
    update()
    return res


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or x != x else format(x, spec)


def realistic_bars(res: dict) -> list[dict]:
    """The issue's bars at gpt2 batch 64, target <= 4 (exact adam, and auto): measured vs goal."""
    out = []
    for c in res.get("cells", []):
        if c["preset"] != "gpt2" or c["batch_size"] != 64 or c["target_rows"] > 4:
            continue
        r = c["ratio_vs_plain"]
        row = {"seq_len": c["seq_len"], "target_rows": c["target_rows"]}
        row["adam_vs_plain"] = r.get("adam exact")
        row["adam_vs_sgd"] = c.get("adam_vs_sgd_exact")
        row["auto_vs_plain"] = r.get("adam auto")
        row["auto_r"] = c.get("fidelity_pearson_vs_exact", {}).get("adam auto")
        for m in res.get("memory", []):
            key = (m["preset"], m["batch_size"], m["seq_len"], m["target_rows"])
            if key == ("gpt2", 64, c["seq_len"], c["target_rows"]):
                k = m["measures"][0]
                row["live_peak_vs_plain"] = m["variants"]["adam exact"][f"{k}_ratio_vs_plain"]
        out.append(row)
    return out


def realistic_markdown(res: dict | None) -> str:
    """The realistic-settings tables (empty string when there are none)."""
    if not res or not res.get("cells") and not res.get("momentum"):
        return ""
    ra, env = res["args"], res["environment"]
    cpu = env["device"] == "cpu"
    conts = list(ra["contractions"])
    sgds = list(ra["sgd_contractions"])
    lines = [
        "**Realistic settings** (`--realistic`): training batch 16/64, target 1/4/16 rows, "
        "exact vs low-rank/auto contraction.",
        "",
        f"Seq as listed, vocab {ra['vocab_size']}, AdamW + clipping 1.0, target gradients "
        f"{ra['target_chunk'] or 'all'} examples at a time, low-rank rank {ra['rank']}, precision "
        f"{ra['amp'] or 'fp32'}, {env['threads']} torch threads on {env['device']} "
        f"({env['cpu_count']} cores"
        + (
            f", load average {env['load_average']:.1f} after the last group"
            if cpu and "load_average" in env
            else ""
        )
        + f"; {env['date']}; rows added by separate `--presets`/`--batches` invocations keep "
        "their own numbers, the date and load are the last invocation's). Each (preset, batch, seq) shares one model and optimizer, restored "
        "(untimed) to one snapshot after a plain step before every round, so every variant steps "
        "from the same state on the same batches. Per target size, plain and the variants run "
        f"interleaved in one process ({ra['warmup']} untimed warm-up step each, then "
        f"{ra['rounds']} rounds x {ra['steps_per_round']} steps, order reversed every other "
        "round"
        + (
            f"; gpt2 on CPU: {ra['big_steps_per_round']} step a round, warm-up on "
            f"{ra['big_warmup_rows']} rows, not counted for R"
            if cpu
            else ""
        )
        + "); cell: throughput as a fraction of plain AdamW (median s/step over rounds). "
        "R: Pearson R of the per-example `adam` values against the exact contraction on the same "
        "steps, all steps (warm-up included) pooled. `auto` picks its layers per weight shape; "
        "where it picks exactly low-rank's layers it is the same computation and is shown as "
        "`= lowrank` (not timed twice). adam/sgd: exact `sgd` s/step over exact `adam` s/step.",
        "",
        "| preset | batch | seq | target rows | plain s/step | "
        + " | ".join(f"adam {c}" for c in conts)
        + " | "
        + " | ".join(f"sgd {c}" for c in sgds)
        + " | adam/sgd |",
        "|---|---|---|---|---|" + "---|" * (len(conts) + len(sgds) + 1),
    ]
    for c in res["cells"]:
        r, fid, same = c["ratio_vs_plain"], c["fidelity_pearson_vs_exact"], c["same_layout_as"]
        cells = []
        for cont in conts:
            v = f"adam {cont}"
            if v in same and cont != "exact":
                cells.append(f"= {same[v].split(' ')[1]}")
            elif v in r:
                cells.append(_fmt(r[v]) + (f" (R {fid[v]:.4f})" if v in fid else ""))
            else:
                cells.append("–")
        cells += [_fmt(r.get(f"sgd {cont}")) for cont in sgds]
        cells.append(_fmt(c.get("adam_vs_sgd_exact")))
        lines.append(
            f"| {c['preset']} | {c['batch_size']} | {c['seq_len']} | {c['target_rows']} | "
            f"{c['seconds_per_step']['plain']:.2f} | " + " | ".join(cells) + " |"
        )
    m = res.get("momentum")
    if m:
        vs = list(m["ratio_vs_plain"])
        lines += [
            "",
            f"Momentum-propagated values (`InRunScorer(momentum_window={m['window']})`, exact "
            f"`adam`): {m['preset']}, batch {m['batch_size']}, seq {m['seq_len']}, target "
            f"{m['target_rows']} rows. Each variant on its own model from one seed, window filled "
            f"first (K+1 untimed steps), then {m['rounds']} interleaved rounds x "
            f"{m['steps_per_round']} steps; cell: fraction of plain (s/step in brackets).",
            "",
            "| " + " | ".join(vs) + " |",
            "|" + "---|" * len(vs),
            "| "
            + " | ".join(
                f"{m['ratio_vs_plain'][v]:.3f} ({m['seconds_per_step'][v]:.2f} s)" for v in vs
            )
            + " |",
        ]
    names = {"cuda_peak_mib": "CUDA peak", "tensor_peak_mib": "live tensors", "peak_mib": "RSS"}
    for mem in res.get("memory", []):
        ms = mem["measures"]
        lines += [
            "",
            f"Peak memory, {mem['preset']} batch {mem['batch_size']} seq {mem['seq_len']} target "
            f"{mem['target_rows']} rows, each variant in its own process (one run): "
            + (
                "CUDA allocator's peak."
                if not cpu
                else "live tensors = peak of tensor bytes alive in the second step, model and "
                "optimizer state included; RSS = peak resident memory above the process baseline "
                "over the first step, which also creates Adam's state (noisier)."
            ),
            "",
            "| variant | " + " | ".join(f"{names[k]} MiB | x plain" for k in ms) + " |",
            "|---|" + "---|---|" * len(ms),
        ]
        for v, x in mem["variants"].items():
            lines.append(
                f"| {v} | "
                + " | ".join(f"{x[k]:.0f} | {x[f'{k}_ratio_vs_plain']:.2f}" for k in ms)
                + " |"
            )
    bars = realistic_bars(res)
    if bars:
        lines += [
            "",
            "Issue #16 bars at gpt2 batch 64, target <= 4 rows, exact `adam` "
            "(goals: >= 0.97 of `sgd`, >= 0.90 of plain, live peak <= 1.3x plain):",
            "",
        ]
        for b in bars:
            lp = b.get("live_peak_vs_plain")

            def met(x, ok):
                return "–" if x is None else ("met" if ok(x) else "not met")

            lines.append(
                f"- seq {b['seq_len']}, target {b['target_rows']}: adam/sgd "
                f"{_fmt(b['adam_vs_sgd'])} ({met(b['adam_vs_sgd'], lambda x: x >= 0.97)}), "
                f"adam/plain {_fmt(b['adam_vs_plain'])} "
                f"({met(b['adam_vs_plain'], lambda x: x >= 0.90)})"
                + (f", live peak {lp:.2f}x plain ({met(lp, lambda x: x <= 1.3)})" if lp else "")
            )
            auto, r_auto = b.get("auto_vs_plain"), b.get("auto_r")
            if auto is not None and r_auto is not None:
                ok = auto >= 0.90 and r_auto >= 0.99
                lines.append(
                    f"  - with `auto` (the contraction it picks at this width): adam/plain "
                    f"{_fmt(auto)}, R {r_auto:.4f} vs exact ({'met' if ok else 'not met'}: "
                    ">= 0.90 of plain at R >= 0.99)"
                )
    if res.get("partial"):
        lines += ["", "*Partial: the run stopped before every cell was measured.*"]
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], mem: dict, a: ThroughputArgs, env: dict) -> str:
    """Ratios table (scored / plain throughput) and memory table."""
    vs = [v for v in VARIANTS if v != "plain"]
    lines = [
        "# Throughput: scored vs plain AdamW training",
        "",
        f"Batch {a.batch_size}, target batch {a.val_size}, vocab {a.vocab_size}, AdamW + clipping 1.0, "
        f"exact ghost contraction, target gradients {a.target_chunk or a.val_size} examples at a time, "
        f"precision {a.amp or 'fp32'}, {env['threads']} torch threads "
        f"on {env['device']} "
        f"({env['cpu_count']} cores). Cell: throughput as a fraction of plain training, "
        "interleaved in one process (median over rounds); plain steps/s in the first column.",
        "",
        "| preset | seq | plain steps/s | " + " | ".join(vs) + " |",
        "|---|---|---|" + "---|" * len(vs),
    ]
    for r in rows:
        cells = [f"{r['ratio_vs_plain'][v]:.3f}" if v in r["ratio_vs_plain"] else "–" for v in vs]
        lines.append(
            f"| {r['preset']} | {r['seq_len']} | {r['steps_per_s']['plain']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    if mem:
        cuda = mem["measures"] == ["cuda_peak_mib"]
        lines += [
            "",
            f"Peak memory ({mem['preset']}, seq {mem['seq_len']}, each variant in its own process, "
            "median of 3 runs). "
            + (
                "CUDA allocator's peak (`max_memory_allocated`)."
                if cuda
                else "Live tensors: the peak of tensor bytes alive during a step, model and "
                "optimizer state included (the CPU counterpart of CUDA's `max_memory_allocated`). "
                "RSS: peak resident memory above the process's baseline, which also holds what "
                "glibc's allocator keeps cached after frees."
            ),
            "",
        ]
        names = {"cuda_peak_mib": "CUDA peak", "tensor_peak_mib": "live tensors", "peak_mib": "RSS"}
        head = " | ".join(f"{names[k]} MiB | x plain" for k in mem["measures"])
        lines += [f"| variant | {head} |", "|---|" + "---|---|" * len(mem["measures"])]
        for v, m in mem["variants"].items():
            cells = " | ".join(
                f"{m[k]:.0f} | {m[f'{k}_ratio_vs_plain']:.2f}" for k in mem["measures"]
            )
            lines.append(f"| {v} | {cells} |")
    lines.append("")
    return "\n".join(lines)


def _write(out_dir, name: str, payload: dict, a: ThroughputArgs) -> None:
    """<name>.json and .md: the grid's tables, then the realistic-settings tables (if any)."""
    env = payload.get("environment") or environment()
    md = markdown(payload.get("rows", []), payload.get("memory", {}), a, env)
    extra = realistic_markdown(payload.get("realistic"))
    if extra:
        md += "\n" + extra
    if out_dir is None:
        write_results(name, payload, md)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
        (out_dir / f"{name}.md").write_text(md)


def main(argv: list[str] | None = None) -> None:
    """Run the grid and write benchmarks/results/throughput.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="the CUDA grid: bf16 autocast, gpt2 shapes")
    ap.add_argument("--presets", default=None, help="comma list to restrict presets")
    ap.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "PRESET", "SEQ"))
    ap.add_argument("--memory-only", action="store_true", help="redo memory, keep timed rows")
    ap.add_argument(
        "--realistic",
        action="store_true",
        help="only the realistic-settings table (batch 16/64, target 1/4/16, exact/low-rank/auto), "
        "added to the existing results file without redoing the grid",
    )
    ap.add_argument("--batches", default=None, help="--realistic: comma list of training batches")
    ap.add_argument("--targets", default=None, help="--realistic: comma list of target rows")
    ap.add_argument("--seqs", default=None, help="--realistic: comma list of sequence lengths")
    ap.add_argument(
        "--parts",
        default="groups,momentum,memory",
        help="--realistic: which rows to (re)do; the file's other realistic rows are kept",
    )
    ap.add_argument("--realistic-memory-child", metavar="SPEC_JSON")
    ap.add_argument("--out", default=None, help="directory for the results (default: results/)")
    ns = ap.parse_args(argv)
    if ns.memory_child:
        v, p, t = ns.memory_child
        _memory_child(v, p, int(t), gpu=ns.gpu)
        return
    if ns.realistic_memory_child:
        _realistic_memory_child(json.loads(ns.realistic_memory_child))
        return
    a = GPU_ARGS if ns.gpu else ThroughputArgs()
    if ns.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device (torch.cuda.is_available() is False)")
    if ns.quick:
        a = ThroughputArgs(
            configs=(("tiny", 64, 2), ("tiny", 128, 2)),
            steps_per_round=1,
            memory_config=("tiny", 64),
        )
    configs = a.configs
    if ns.presets:
        keep = set(ns.presets.split(","))
        configs = tuple(c for c in configs if c[0] in keep)
    name = "throughput_quick" if ns.quick else "throughput_gpu" if ns.gpu else "throughput"
    out_dir = None if ns.out is None else Path(ns.out)
    path = (out_dir or RESULTS) / f"{name}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if ns.realistic:
        ra = GPU_REALISTIC if ns.gpu else QUICK_REALISTIC if ns.quick else RealisticArgs()
        presets = set(ns.presets.split(",")) if ns.presets else None
        batches = {int(b) for b in ns.batches.split(",")} if ns.batches else None
        if ns.targets:
            want = {int(t) for t in ns.targets.split(",")}
            pick = lambda gs: tuple(  # noqa: E731
                (p, b, t, tuple(x for x in ts if x in want)) for p, b, t, ts in gs
            )
            ra = replace(ra, groups=pick(ra.groups), extra_groups=pick(ra.extra_groups))
        if ns.seqs:
            seqs = {int(t) for t in ns.seqs.split(",")}
            ra = replace(
                ra,
                groups=tuple(g for g in ra.groups if g[2] in seqs),
                extra_groups=tuple(g for g in ra.extra_groups if g[2] in seqs),
            )
        payload = previous or {"args": asdict(a), "rows": [], "memory": {}}

        def on_update(res: dict) -> None:
            payload["realistic"] = res
            _write(out_dir, name, payload, a)

        res = realistic(
            ra,
            on_update,
            keep=lambda p, b: (
                (presets is None or p in presets) and (batches is None or b in batches)
            ),
            parts=tuple(x.strip() for x in ns.parts.split(",") if x.strip()),
            previous=previous.get("realistic"),  # rows this run does not redo are kept
        )
        print(realistic_markdown(res))
        return
    rows = []
    if ns.memory_only:
        rows = previous["rows"]
        configs = ()
    extra = {"realistic": previous["realistic"]} if "realistic" in previous else {}
    for preset, T, rounds in configs:
        t0 = time.time()
        rows.append(time_config(preset, T, rounds, a))
        print(
            f"{preset} seq {T}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in rows[-1]["ratio_vs_plain"].items())
            + f"  ({time.time() - t0:.0f}s)",
            flush=True,
        )
        env = environment()  # written after every configuration: a crash keeps the rows so far
        payload = {"args": asdict(a), "environment": env, "rows": rows, "memory": {}}
        _write(out_dir, name, {**payload, "partial": True, **extra}, a)
    mem = memory(a)
    env = environment()
    payload = {"args": asdict(a), "environment": env, "rows": rows, "memory": mem, **extra}
    _write(out_dir, name, payload, a)
    print(markdown(rows, mem, a, env))


if __name__ == "__main__":
    main()
