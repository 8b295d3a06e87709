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

Only torch and transformers are needed (no polars/curation), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from adamshap_core import InRunScorer, build_model, plain_step
from adamshap_core.batch import per_example_loss, per_example_loss_from_logits, prepare_batch

from .common import RESULTS, environment, write_results

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
    times = {v: [] for v in runners}
    spr = 1 if preset == "gpt2" and a.device == "cpu" else a.steps_per_round  # ~2-20 s a step
    for r in range(rounds):
        for v, run in runners.items():
            getattr(run, "prepare", lambda: None)()  # gpt2 on CPU: restore the snapshot, untimed
            t0 = time.perf_counter()
            for k in range(spr):
                run(batches[(r + k) % len(batches)])
            _sync(a.device)
            times[v].append((time.perf_counter() - t0) / spr)
    med = {v: float(np.median(ts)) for v, ts in times.items()}
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


def main(argv: list[str] | None = None) -> None:
    """Run the grid and write benchmarks/results/throughput.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="the CUDA grid: bf16 autocast, gpt2 shapes")
    ap.add_argument("--presets", default=None, help="comma list to restrict presets")
    ap.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "PRESET", "SEQ"))
    ap.add_argument("--memory-only", action="store_true", help="redo memory, keep timed rows")
    ns = ap.parse_args(argv)
    if ns.memory_child:
        v, p, t = ns.memory_child
        _memory_child(v, p, int(t), gpu=ns.gpu)
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
    rows = []
    if ns.memory_only:
        rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
        configs = ()
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
        write_results(
            name,
            {"args": asdict(a), "environment": env, "rows": rows, "memory": {}, "partial": True},
            markdown(rows, {}, a, env),
        )
    mem = memory(a)
    env = environment()
    md = markdown(rows, mem, a, env)
    write_results(name, {"args": asdict(a), "environment": env, "rows": rows, "memory": mem}, md)
    print(md)


if __name__ == "__main__":
    main()
