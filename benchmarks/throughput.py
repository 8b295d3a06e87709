"""Throughput and memory: plain AdamW steps vs scored steps vs torch.func per-example gradients.

All variants of one configuration run interleaved in one process (A B C ... A B C ...) on the
same model shape, batches and target batch, so the ratios are robust to machine noise. Peak memory
is measured per variant in a fresh subprocess (CPU: peak RSS above the process's baseline after
building model and data; CUDA: `torch.cuda.max_memory_allocated`).

    python -m benchmarks.throughput                # presets tiny, cpu-small, gpt2 x seq 64/128/256
    python -m benchmarks.throughput --quick
"""

from __future__ import annotations

import argparse
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


def _data(vocab: int, n: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, vocab, (n, T), generator=g)}


class PerExampleStep:
    """The naive alternative: materialise every per-example gradient with torch.func, then dot."""

    def __init__(self, model, opt, val, max_grad_norm=1.0):
        self.model, self.opt, self.val, self.clip = model, opt, prepare_batch(val), max_grad_norm
        self.names = [k for k, _ in model.named_parameters()]

    def step(self, batch):
        b = prepare_batch(batch)
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
        vals = torch.zeros(n, dtype=torch.float64)
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


def make_runner(variant: str, preset: str, T: int, a: ThroughputArgs, seed: int = 0):
    """A model, optimizer and a `step(batch)` callable for one variant."""
    model = build_model(preset, a.vocab_size, max(T, 256), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    val = _data(a.vocab_size, a.val_size, T, seed=999)
    ests = VARIANTS[variant]
    if ests is None:
        return lambda b: plain_step(model, opt, b, 1.0)
    if ests == ():
        return PerExampleStep(model, opt, val).step
    sc = InRunScorer(model, opt, val, estimators=ests, max_grad_norm=1.0)
    return sc.step


def time_config(preset: str, T: int, rounds: int, a: ThroughputArgs) -> dict:
    """Interleave all variants for `rounds` rounds; return steps/s and ratios vs plain."""
    runners = {v: make_runner(v, preset, T, a) for v in VARIANTS}
    if preset == "gpt2":
        runners.pop("per-example grads (torch.func), adam")  # minutes per step on 2 CPU cores
    batches = [_data(a.vocab_size, a.batch_size, T, seed=s) for s in range(4)]
    for run in runners.values():  # warm-up
        run(batches[0])
    times = {v: [] for v in runners}
    for r in range(rounds):
        for v, run in runners.items():
            t0 = time.perf_counter()
            for k in range(a.steps_per_round):
                run(batches[(r + k) % len(batches)])
            times[v].append((time.perf_counter() - t0) / a.steps_per_round)
    med = {v: float(np.median(ts)) for v, ts in times.items()}
    return {
        "preset": preset,
        "seq_len": T,
        "rounds": rounds,
        "seconds_per_step": med,
        "steps_per_s": {v: 1 / s for v, s in med.items()},
        "ratio_vs_plain": {v: med["plain"] / s for v, s in med.items()},
    }


def _rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _memory_child(variant: str, preset: str, T: int) -> None:
    a = ThroughputArgs()
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
    print(json.dumps(out))


def memory(a: ThroughputArgs) -> dict:
    """Peak memory above baseline of each variant, each in its own process."""
    preset, T = a.memory_config
    out = {}
    for v in VARIANTS:
        res = subprocess.run(
            [sys.executable, "-m", "benchmarks.throughput", "--memory-child", v, preset, str(T)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    plain = out["plain"]["peak_mib"]
    for v in out:
        out[v]["ratio_vs_plain"] = out[v]["peak_mib"] / plain if plain > 0 else float("nan")
    return {"preset": preset, "seq_len": T, "variants": out}


def markdown(rows: list[dict], mem: dict, a: ThroughputArgs, env: dict) -> str:
    """Ratios table (scored / plain throughput) and memory table."""
    vs = [v for v in VARIANTS if v != "plain"]
    lines = [
        "# Throughput: scored vs plain AdamW training",
        "",
        f"Batch {a.batch_size}, target batch {a.val_size}, vocab {a.vocab_size}, AdamW + clipping 1.0, "
        f"exact ghost contraction, {env['threads']} torch threads on {env['device']} "
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
        lines += [
            "",
            f"Peak memory above the process baseline ({mem['preset']}, seq {mem['seq_len']}, each variant in "
            "its own process):",
            "",
            "| variant | peak MiB | x plain |",
            "|---|---|---|",
        ]
        for v, m in mem["variants"].items():
            lines.append(f"| {v} | {m['peak_mib']:.0f} | {m['ratio_vs_plain']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the grid and write benchmarks/results/throughput.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--presets", default=None, help="comma list to restrict presets")
    ap.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "PRESET", "SEQ"))
    ap.add_argument("--memory-only", action="store_true", help="redo memory, keep timed rows")
    ns = ap.parse_args(argv)
    if ns.memory_child:
        v, p, t = ns.memory_child
        _memory_child(v, p, int(t))
        return
    a = ThroughputArgs()
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
    name = "throughput_quick" if ns.quick else "throughput"
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
    mem = memory(a)
    env = environment()
    md = markdown(rows, mem, a, env)
    write_results(name, {"args": asdict(a), "environment": env, "rows": rows, "memory": mem}, md)
    print(md)


if __name__ == "__main__":
    main()
